-- Result integrity under sabotage: trust per host and module, daily quotas,
-- randomized and spaced replica issue, one network per unit, units accepted
-- from one trusted host, deferred and revoked credit.

-- Consecutive valid results of a host for one module (adaptive replication).
CREATE TABLE host_trust (
    host_id BIGINT NOT NULL REFERENCES hosts(id),
    module BYTEA NOT NULL,
    consecutive_valid BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (host_id, module)
);

-- Results a host may take per day, and what it took on `quota_day`
-- (days since the epoch).
ALTER TABLE hosts ADD COLUMN daily_quota BIGINT NOT NULL DEFAULT 64;
ALTER TABLE hosts ADD COLUMN quota_day BIGINT NOT NULL DEFAULT 0;
ALTER TABLE hosts ADD COLUMN sent_today BIGINT NOT NULL DEFAULT 0;
-- When the host last passed a check (a replicated result found valid):
-- what it returned alone before then is paid.
ALTER TABLE hosts ADD COLUMN checked_ms BIGINT NOT NULL DEFAULT 0;

-- BLAKE3 of the job's module: trust is earned per module.
ALTER TABLE jobs ADD COLUMN module_hash BYTEA NOT NULL DEFAULT ''::bytea;
-- 1: trusted hosts may get units alone (adaptive replication).
ALTER TABLE jobs ADD COLUMN adaptive BIGINT NOT NULL DEFAULT 1;

-- The quorum this unit needs now: 1 when issued alone to a trusted host;
-- NULL means the job's min_quorum.
ALTER TABLE units ADD COLUMN quorum BIGINT;
-- Once done: 1 if several hosts agreed on the canonical result, 0 if it
-- was accepted on one trusted host's word.
ALTER TABLE units ADD COLUMN replicated BIGINT;
-- Last time a host was refused this unit only because it shares a network
-- with a host holding a replica.
ALTER TABLE units ADD COLUMN network_wait_ms BIGINT NOT NULL DEFAULT 0;

-- Random order of issue, so back-to-back askers do not pair up.
ALTER TABLE results ADD COLUMN rand_key BIGINT NOT NULL DEFAULT 0;
-- 1 for a further replica of a unit already issued: these go first, so
-- units finish rather than all start.
ALTER TABLE results ADD COLUMN further BIGINT NOT NULL DEFAULT 0;
-- Not issued before this time (replica spacing).
ALTER TABLE results ADD COLUMN ready_ms BIGINT NOT NULL DEFAULT 0;
-- Until this time only hosts with at least `reserved_min_valid`
-- consecutive valid results for the module may take it.
ALTER TABLE results ADD COLUMN reserved_until_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE results ADD COLUMN reserved_min_valid BIGINT NOT NULL DEFAULT 0;
-- The network (/24 or /48) the holder asked from; NULL where exempt.
ALTER TABLE results ADD COLUMN network TEXT;
-- The holder's consecutive valid results for the module when it took it.
ALTER TABLE results ADD COLUMN host_valid BIGINT NOT NULL DEFAULT 0;
-- none | deferred (valid on one host's word, paid after its next passed
-- check) | granted | revoked (granted, then found invalid).
ALTER TABLE results ADD COLUMN credit TEXT NOT NULL DEFAULT 'none';
ALTER TABLE results ADD COLUMN revoked_credit DOUBLE PRECISION NOT NULL DEFAULT 0;
UPDATE results SET credit = 'granted' WHERE validate_state = 'valid';
CREATE INDEX results_unsent_random ON results(state, further, rand_key);
CREATE INDEX results_deferred ON results(host_id) WHERE credit = 'deferred';
CREATE INDEX units_by_canonical ON units(canonical_result_id);
