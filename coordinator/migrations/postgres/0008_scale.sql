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
