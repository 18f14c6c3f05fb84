-- A job's reduce unit ([reduce]): one more unit whose inputs are every
-- other unit's canonical output, made when the last of them is done.
ALTER TABLE units ADD COLUMN is_reduce INTEGER NOT NULL DEFAULT 0;
