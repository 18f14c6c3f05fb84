-- Core schema: accounts, teams, hosts, jobs, work units and their results.
-- Times are Unix milliseconds. The PostgreSQL twin of this file lives in
-- ../postgres/ and must stay column-for-column the same.

CREATE TABLE teams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    total_credit REAL NOT NULL DEFAULT 0,
    rac REAL NOT NULL DEFAULT 0,
    rac_time_ms INTEGER NOT NULL DEFAULT 0,
    valid_results INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    key_hash BLOB NOT NULL,
    team_id INTEGER REFERENCES teams(id),
    total_credit REAL NOT NULL DEFAULT 0,
    rac REAL NOT NULL DEFAULT 0,
    rac_time_ms INTEGER NOT NULL DEFAULT 0,
    valid_results INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);

CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    key_hash BLOB NOT NULL,
    cpus INTEGER NOT NULL DEFAULT 0,
    memory_bytes INTEGER NOT NULL DEFAULT 0,
    os TEXT NOT NULL DEFAULT '',
    total_credit REAL NOT NULL DEFAULT 0,
    rac REAL NOT NULL DEFAULT 0,
    rac_time_ms INTEGER NOT NULL DEFAULT 0,
    valid_results INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL,
    last_contact_ms INTEGER NOT NULL
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    -- running | done | cancelled
    state TEXT NOT NULL,
    -- The JobSpec as submitted, protobuf-encoded.
    spec BLOB NOT NULL,
    min_quorum INTEGER NOT NULL,
    target_results INTEGER NOT NULL,
    max_total_results INTEGER NOT NULL,
    deadline_s INTEGER NOT NULL,
    units_total INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER
);

CREATE TABLE units (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    -- Args and inputs of this unit: a protobuf Manifest with only those set.
    payload BLOB NOT NULL,
    -- pending | done | errored
    state TEXT NOT NULL,
    canonical_result_id INTEGER,
    error TEXT,
    created_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    UNIQUE (job_id, idx)
);
CREATE INDEX units_by_state ON units(job_id, state);

CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    unit_id INTEGER NOT NULL REFERENCES units(id),
    -- unsent | in_progress | reported | timed_out | aborted
    state TEXT NOT NULL,
    -- success | client_error, once reported
    outcome TEXT,
    -- none | pending | valid | invalid | not_needed
    validate_state TEXT NOT NULL DEFAULT 'none',
    host_id INTEGER REFERENCES hosts(id),
    account_id INTEGER REFERENCES accounts(id),
    -- The fencing token a report must quote.
    lease_id TEXT UNIQUE,
    sent_ms INTEGER,
    deadline_ms INTEGER,
    reported_ms INTEGER,
    -- Success: stdout and output files, protobuf-encoded; digest compares them.
    output BLOB,
    digest BLOB,
    fuel_used INTEGER,
    elapsed_ms INTEGER,
    error_kind TEXT,
    error_message TEXT,
    granted_credit REAL NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL
);
CREATE INDEX results_by_unit ON results(unit_id);
CREATE INDEX results_by_state ON results(state, id);
CREATE INDEX results_by_deadline ON results(state, deadline_ms);
CREATE INDEX results_by_host ON results(host_id);
-- Invariant 1, enforced by the database: a host holds at most one live
-- result of a unit (a timed-out one no longer counts as held).
CREATE UNIQUE INDEX results_one_per_host ON results(unit_id, host_id)
    WHERE host_id IS NOT NULL AND state <> 'timed_out';
