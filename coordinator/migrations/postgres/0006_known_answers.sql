-- Known-answer units ([spot_check]): units of a job whose right output the
-- researcher knows, each handed to several hosts to check them.

-- The right output digest; NULL for the job's own units.
ALTER TABLE units ADD COLUMN known_digest BYTEA;
-- The fuel the right result takes, if the researcher gave it (0: unknown).
ALTER TABLE units ADD COLUMN known_fuel BIGINT NOT NULL DEFAULT 0;
