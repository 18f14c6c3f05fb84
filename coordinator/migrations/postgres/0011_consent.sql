-- Consent to show a volunteer's names in public (BOINC's STATSEXPORT
-- consent, opt-in): 1 when the account allowed it at its latest attach.
ALTER TABLE accounts ADD COLUMN public_name BIGINT NOT NULL DEFAULT 0;
-- A random id per account; only its hash goes into the stats export, so
-- stats sites can join one volunteer across projects without learning who.
ALTER TABLE accounts ADD COLUMN cross_project_id TEXT;
