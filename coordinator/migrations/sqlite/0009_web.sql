-- The web site's ranked lists: RAC ordering keys (credit::rac_order_key;
-- -1e300 for none), and indexes that make a page of a list by total credit
-- or by RAC an index scan that stops after the page.
ALTER TABLE accounts ADD COLUMN rac_key REAL NOT NULL DEFAULT -1e300;
ALTER TABLE teams ADD COLUMN rac_key REAL NOT NULL DEFAULT -1e300;
ALTER TABLE hosts ADD COLUMN rac_key REAL NOT NULL DEFAULT -1e300;
CREATE INDEX accounts_by_credit ON accounts(total_credit DESC, id);
CREATE INDEX accounts_by_rac ON accounts(rac_key DESC, id);
CREATE INDEX teams_by_credit ON teams(total_credit DESC, id);
CREATE INDEX teams_by_rac ON teams(rac_key DESC, id);
CREATE INDEX hosts_by_credit ON hosts(total_credit DESC, id);
CREATE INDEX hosts_by_rac ON hosts(rac_key DESC, id);
