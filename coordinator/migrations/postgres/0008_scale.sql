-- Scale-out (issue 14). Small outputs sent inline with their report are
-- kept here, one row each, instead of as an fsync'd file each; readers look
-- here when the blob store has no file of that hash.
CREATE TABLE small_blobs (
    hash BYTEA PRIMARY KEY,
    bytes BYTEA NOT NULL,
    created_ms BIGINT NOT NULL
);

-- What a host holds in progress, counted on every request for work: by
-- host and state, so the count does not grow with the host's history.
DROP INDEX results_by_host;
CREATE INDEX results_by_host_state ON results(host_id, state);

-- The tracker's state when several coordinators share one database: who
-- holds which blob (announced in heartbeats), and how often the
-- coordinators handed out each chunk as the super-seed. Soft state.
CREATE TABLE blob_holders (
    hash BYTEA NOT NULL,
    host_id BIGINT NOT NULL,
    address TEXT NOT NULL,
    certificate BYTEA NOT NULL,
    seen_ms BIGINT NOT NULL,
    PRIMARY KEY (hash, host_id)
);
CREATE INDEX blob_holders_by_seen ON blob_holders(hash, seen_ms);
CREATE TABLE seed_chunks (
    hash BYTEA NOT NULL,
    chunk BIGINT NOT NULL,
    served BIGINT NOT NULL,
    PRIMARY KEY (hash, chunk)
);

-- Retention: when the researcher first collected a finished job's results,
-- and when its results and units were purged (the job row stays).
ALTER TABLE jobs ADD COLUMN collected_ms BIGINT;
ALTER TABLE jobs ADD COLUMN purged_ms BIGINT;

-- A unit's results by state: with unit_id alone, a planner without
-- statistics may take `results_unsent_random` for "this unit's unsent
-- results" and walk every unsent result (seen: 110 ms per claim).
DROP INDEX results_by_unit;
CREATE INDEX results_by_unit_state ON results(unit_id, state);
