-- Core schema: accounts, teams, hosts, jobs, work units and their results.
-- Times are Unix milliseconds. The PostgreSQL twin of this file lives in
-- ../postgres/ and must stay column-for-column the same.

CREATE TABLE teams (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    total_credit DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac_time_ms BIGINT NOT NULL DEFAULT 0,
    valid_results BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);

CREATE TABLE accounts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash BYTEA NOT NULL,
    team_id BIGINT REFERENCES teams(id),
    total_credit DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac_time_ms BIGINT NOT NULL DEFAULT 0,
    valid_results BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);

CREATE TABLE hosts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    key_hash BYTEA NOT NULL,
    cpus BIGINT NOT NULL DEFAULT 0,
    memory_bytes BIGINT NOT NULL DEFAULT 0,
    os TEXT NOT NULL DEFAULT '',
    total_credit DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac DOUBLE PRECISION NOT NULL DEFAULT 0,
    rac_time_ms BIGINT NOT NULL DEFAULT 0,
    valid_results BIGINT NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    last_contact_ms BIGINT NOT NULL
);

CREATE TABLE jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    -- running | done | cancelled
    state TEXT NOT NULL,
    -- The JobSpec as submitted, protobuf-encoded.
    spec BYTEA NOT NULL,
    min_quorum BIGINT NOT NULL,
    target_results BIGINT NOT NULL,
    max_total_results BIGINT NOT NULL,
    deadline_s BIGINT NOT NULL,
    units_total BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT
);

CREATE TABLE units (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs(id),
    idx BIGINT NOT NULL,
    -- Args and inputs of this unit: a protobuf Manifest with only those set.
    payload BYTEA NOT NULL,
    -- pending | done | errored
    state TEXT NOT NULL,
    canonical_result_id BIGINT,
    error TEXT,
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT,
    UNIQUE (job_id, idx)
);
CREATE INDEX units_by_state ON units(job_id, state);

CREATE TABLE results (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    unit_id BIGINT NOT NULL REFERENCES units(id),
    -- unsent | in_progress | reported | timed_out | aborted
    state TEXT NOT NULL,
    -- success | client_error, once reported
    outcome TEXT,
    -- none | pending | valid | invalid | not_needed
    validate_state TEXT NOT NULL DEFAULT 'none',
    host_id BIGINT REFERENCES hosts(id),
    account_id BIGINT REFERENCES accounts(id),
    -- The fencing token a report must quote.
    lease_id TEXT UNIQUE,
    sent_ms BIGINT,
    deadline_ms BIGINT,
    reported_ms BIGINT,
    -- Success: stdout and output files, protobuf-encoded; digest compares them.
    output BYTEA,
    digest BYTEA,
    fuel_used BIGINT,
    elapsed_ms BIGINT,
    error_kind TEXT,
    error_message TEXT,
    granted_credit DOUBLE PRECISION NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL
);
CREATE INDEX results_by_unit ON results(unit_id);
CREATE INDEX results_by_state ON results(state, id);
CREATE INDEX results_by_deadline ON results(state, deadline_ms);
CREATE INDEX results_by_host ON results(host_id);
-- Invariant 1, enforced by the database: a host holds at most one live
-- result of a unit (a timed-out one no longer counts as held).
CREATE UNIQUE INDEX results_one_per_host ON results(unit_id, host_id)
    WHERE host_id IS NOT NULL AND state <> 'timed_out';
