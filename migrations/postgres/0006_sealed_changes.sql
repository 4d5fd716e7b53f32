-- Writers append `changes` rows unsealed (`seq` and `chain` NULL) and a
-- sealer numbers and chains them after commit, so writers of one producer no
-- longer take turns. Rows written before this are sealed already.
ALTER TABLE changes
    ALTER COLUMN seq DROP NOT NULL,
    ALTER COLUMN chain DROP NOT NULL;
CREATE INDEX changes_unsealed ON changes (producer, id) WHERE seq IS NULL;
