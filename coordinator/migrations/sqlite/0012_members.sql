-- A user's hosts and a team's members, best first: without these a page
-- walked every host (or account) in credit order to find one owner's
-- (measured: 5 user pages a second over 200,000 hosts on SQLite).
CREATE INDEX hosts_by_account ON hosts(account_id, total_credit DESC, id);
CREATE INDEX accounts_by_team ON accounts(team_id, total_credit DESC, id);
