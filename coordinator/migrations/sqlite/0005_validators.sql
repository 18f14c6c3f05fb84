-- Researchers' validator modules: the coordinator runs them outside any
-- transaction, on the units that wait for them.

-- 1: a success of this unit awaits the job's validator module.
ALTER TABLE units ADD COLUMN needs_validator INTEGER NOT NULL DEFAULT 0;
CREATE INDEX units_needing_validator ON units (id) WHERE needs_validator = 1;

-- Under a module validator: the group of agreeing results this success
-- belongs to (negative: the validator rejected it); NULL until it ran.
ALTER TABLE results ADD COLUMN agreement_group INTEGER;
