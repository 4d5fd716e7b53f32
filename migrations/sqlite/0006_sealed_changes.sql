-- SQLite has one writer at a time: its writers seal `changes` rows as they
-- append them (PostgreSQL's writers leave that to a sealer). Nothing changes
-- here; the number keeps both backends' migrations in step.
SELECT 1;
