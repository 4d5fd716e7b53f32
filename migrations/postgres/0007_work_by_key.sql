-- Work items by entity, whatever their state: emitting a keyframe's work
-- looks up each drifted key's open item and its recently done ones, a page
-- of keys at a time (the partial unique index covers only open items).
CREATE INDEX work_by_key ON work (producer, key);
