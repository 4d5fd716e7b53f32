-- The fingerprint of the hashing rules (canonical form and `ignore` pointers)
-- the stored hashes were computed with. NULL until recorded: the next start
-- or keyframe then recomputes every stored hash once and records it.
ALTER TABLE layouts ADD COLUMN hash_rules TEXT;
