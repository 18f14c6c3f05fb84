-- Researcher accounts: who may submit, cancel and collect which jobs, under
-- which quotas, and an audit log of what they did. The first account is
-- made from the project's researcher.token on first start.

CREATE TABLE researchers (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- BLAKE3 of the token; the token itself is shown once and never kept.
    token_hash BYTEA NOT NULL UNIQUE,
    -- 1: may cancel and collect every job, and is not held to quotas.
    admin BIGINT NOT NULL DEFAULT 0,
    -- Bytes of uploads (modules, inputs) this researcher may keep; 0: no limit.
    max_stored_bytes BIGINT NOT NULL,
    -- Units of running jobs not yet done; 0: no limit.
    max_units_in_flight BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);

-- Who submitted each job; NULL only for jobs from before accounts, which the
-- first account adopts.
ALTER TABLE jobs ADD COLUMN researcher_id BIGINT REFERENCES researchers(id);
CREATE INDEX jobs_by_researcher ON jobs(researcher_id, state);

-- Blobs a researcher uploaded (counted against the quota) or was shown as
-- outputs of their own jobs (may then download them).
CREATE TABLE researcher_blobs (
    researcher_id BIGINT NOT NULL REFERENCES researchers(id),
    hash BYTEA NOT NULL,
    size BIGINT NOT NULL,
    uploaded BIGINT NOT NULL,
    PRIMARY KEY (researcher_id, hash)
);
CREATE INDEX researcher_blobs_by_hash ON researcher_blobs(hash);

CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    -- The researcher's name, or "operator" for the coordinator's own CLI.
    actor TEXT NOT NULL,
    -- submit | cancel | results | download | researcher_add | researcher_revoke
    action TEXT NOT NULL,
    job_id BIGINT,
    detail TEXT NOT NULL
);
