-- Whether driftd's mirror carries a done item's correction (1) or still has
-- to write it (0). Every path that finishes an item (an apply worker, an
-- http 2xx, an application's own worker through SQL, `driftd work done`)
-- leaves the item done; driftd then writes the producer's record it carried
-- into the mirror, compare-and-set on the local hash the keyframe saw, and
-- sets this flag in the same transaction. Items done before this column
-- existed are taken as mirrored.
ALTER TABLE work ADD COLUMN mirrored INTEGER NOT NULL DEFAULT 0;
UPDATE work SET mirrored = 1 WHERE state = 'done';
CREATE INDEX work_to_mirror ON work (producer, id) WHERE state = 'done' AND mirrored = 0;
