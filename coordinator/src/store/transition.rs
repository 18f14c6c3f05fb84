//! The transitioner: re-decides a unit from all its results and applies the
//! decision, with its consequences for the hosts involved: trust and daily
//! quota move with each outcome, credit is granted (or deferred, for a unit
//! accepted on one trusted host's word, until that host next passes a
//! check), and a host caught in disagreement has every result it returned
//! unreplicated verified again, with credit taken back where a check
//! overturns it (BOINC's punitive validation).

use super::Store;
use super::scheduler::Reserve;
use crate::credit;
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::integrity::{self, Outcome};
use crate::validate::{self, Decision, ResultState, ResultView};
use cobble_core::BlobHash;
use cobble_core::agreement::Agreement;
use cobble_proto::v1 as pb;
use prost::Message;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// What a decision does to hosts, accounts and teams, gathered first and
/// applied in one global order (hosts, accounts, teams, each by id) so that
/// concurrent transitions on PostgreSQL cannot deadlock on those rows.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Per host: outcomes in order, per module.
    outcomes: BTreeMap<i64, Vec<(Vec<u8>, Outcome)>>,
    /// (result id, credit) to grant.
    grants: Vec<(i64, f64)>,
    /// Results whose granted credit is taken back.
    revokes: Vec<i64>,
    /// Hosts caught returning a wrong result.
    caught: Vec<i64>,
    /// Hosts that passed a check: what they returned alone before it is
    /// paid by [`Store::release_deferred_credit`].
    passed: Vec<i64>,
}

impl Ledger {
    /// A result of a known-answer unit, judged against the known answer:
    /// a check the host passed (credited) or failed (caught).
    pub(super) fn known_answer(
        &mut self,
        host_id: i64,
        module: &[u8],
        result_id: i64,
        passed: Option<f64>,
    ) {
        match passed {
            Some(credit) => {
                self.outcome(host_id, module, Outcome::Valid);
                self.grants.push((result_id, credit));
                self.passed.push(host_id);
            }
            None => self.outcome(host_id, module, Outcome::Invalid),
        }
    }

    pub(super) fn outcome(&mut self, host_id: i64, module: &[u8], outcome: Outcome) {
        self.outcomes
            .entry(host_id)
            .or_default()
            .push((module.to_vec(), outcome));
        if outcome == Outcome::Invalid && !self.caught.contains(&host_id) {
            self.caught.push(host_id);
        }
    }
}

/// One result row as the transitioner reads it.
struct ResultRow {
    view: ResultView,
    host_id: Option<i64>,
    credit: String,
}

impl Store {
    /// Re-decides a pending unit from all its results and applies the decision.
    /// What it does to hosts, accounts and teams goes into `ledger`, which
    /// the caller settles once per transaction ([`Store::settle_in`]).
    pub(super) async fn transition_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        now: i64,
        ledger: &mut Ledger,
        stdouts: &Stdouts,
    ) -> Result<()> {
        let unit = sqlx::query(&format!(
            "SELECT u.state, u.job_id, u.quorum, u.known_digest, j.min_quorum, j.max_total_results,
                    j.spec, j.module_hash
             FROM units u JOIN jobs j ON j.id = u.job_id WHERE u.id = $1{}",
            self.db.for_update_of("u")
        ))
        .bind(unit_id)
        .fetch_one(&mut **tx)
        .await?;
        // A known-answer unit's results are judged one by one as they come
        // (`report_result`); it needs no quorum and no further replicas.
        if unit.try_get::<String, _>("state")? != "pending"
            || unit
                .try_get::<Option<Vec<u8>>, _>("known_digest")?
                .is_some()
        {
            return Ok(());
        }
        let job_id: i64 = unit.try_get("job_id")?;
        let module: Vec<u8> = unit.try_get("module_hash")?;
        // Set when the unit's quorum was changed from the job's: issued
        // alone, spot-checked, verified again, or confirmed once already.
        let unit_quorum: Option<i64> = unit.try_get("quorum")?;
        let min_quorum = unit_quorum.unwrap_or(unit.try_get("min_quorum")?);
        let replication = validate::Replication {
            min_quorum: min_quorum.clamp(1, 1000) as u32,
            max_total_results: unit.try_get::<i64, _>("max_total_results")?.clamp(1, 1000) as u32,
        };
        let spec: Vec<u8> = unit.try_get("spec")?;
        let spec = pb::JobSpec::decode(spec.as_slice())
            .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
        let agreement = Agreement::of(spec.validator.as_ref());
        let Some(rows) = self.result_rows_in(tx, unit_id, agreement, stdouts).await? else {
            // A numeric stdout to read: the daemon reads it outside any
            // transaction, then decides the unit.
            self.want_validation_in(tx, unit_id).await?;
            return Ok(());
        };
        let views: Vec<ResultView> = rows.iter().map(|r| r.view.clone()).collect();
        let row_of = |id: i64| rows.iter().find(|r| r.view.id == id);

        match validate::decide(replication, agreement, &views) {
            Decision::Wait { new_results } => {
                if new_results > 0 {
                    let live = live_results(&views);
                    self.add_replicas_in(
                        tx,
                        unit_id,
                        &module,
                        live + new_results,
                        Reserve::Always,
                        now,
                    )
                    .await?;
                }
            }
            Decision::Done { ref valid, .. }
                if unit_quorum.is_none()
                    && (views.len() as u32) < replication.max_total_results
                    && self
                        .only_new_hosts_agree(tx, valid, &rows, &module, now)
                        .await? =>
            {
                // Confirmed by one more result, kept for proven hosts.
                sqlx::query("UPDATE units SET quorum = $1 WHERE id = $2")
                    .bind(valid.len() as i64 + 1)
                    .bind(unit_id)
                    .execute(&mut **tx)
                    .await?;
                let live = live_results(&views);
                self.add_replicas_in(tx, unit_id, &module, live + 1, Reserve::Always, now)
                    .await?;
                tracing::debug!(
                    unit_id,
                    "agreement of new hosts only: one more result to confirm"
                );
            }
            Decision::Done {
                canonical,
                valid,
                invalid,
                credit,
            } => {
                let replicated = valid.len() >= 2;
                for result_id in &invalid {
                    sqlx::query("UPDATE results SET validate_state = 'invalid' WHERE id = $1")
                        .bind(result_id)
                        .execute(&mut **tx)
                        .await?;
                    if let Some(row) = row_of(*result_id) {
                        if row.credit == "granted" {
                            ledger.revokes.push(*result_id);
                        }
                        if let Some(host_id) = row.host_id {
                            ledger.outcome(host_id, &module, Outcome::Invalid);
                        }
                    }
                }
                for result_id in &valid {
                    sqlx::query("UPDATE results SET validate_state = 'valid' WHERE id = $1")
                        .bind(result_id)
                        .execute(&mut **tx)
                        .await?;
                    let Some(row) = row_of(*result_id) else {
                        continue;
                    };
                    if row.credit == "none"
                        && let Some(host_id) = row.host_id
                    {
                        ledger.outcome(host_id, &module, Outcome::Valid);
                    }
                    match (row.credit.as_str(), replicated) {
                        ("none" | "deferred", true) => ledger.grants.push((*result_id, credit)),
                        ("none", false) => {
                            // One host's word: paid after its next passed check.
                            sqlx::query("UPDATE results SET credit = 'deferred' WHERE id = $1")
                                .bind(result_id)
                                .execute(&mut **tx)
                                .await?;
                        }
                        _ => {}
                    }
                }
                if replicated {
                    // Every valid host passed a check.
                    ledger.passed.extend(
                        valid
                            .iter()
                            .filter_map(|id| row_of(*id).and_then(|r| r.host_id)),
                    );
                }
                sqlx::query(
                    "UPDATE units SET state = 'done', canonical_result_id = $1, finished_ms = $2, replicated = $3
                     WHERE id = $4",
                )
                .bind(canonical)
                .bind(now)
                .bind(i64::from(replicated))
                .bind(unit_id)
                .execute(&mut **tx)
                .await?;
                self.close_unit_in(tx, unit_id, job_id, now).await?;
                tracing::debug!(
                    unit_id,
                    valid = valid.len(),
                    invalid = invalid.len(),
                    replicated,
                    "unit done"
                );
            }
            Decision::Validate => self.want_validation_in(tx, unit_id).await?,
            Decision::Errored { reason } => {
                // What the hosts said, so a researcher sees why (a memory
                // limit, a trap) without reading the database.
                let last_error = sqlx::query(
                    "SELECT error_kind, error_message FROM results
                     WHERE unit_id = $1 AND outcome = 'client_error'
                     ORDER BY reported_ms DESC, id DESC LIMIT 1",
                )
                .bind(unit_id)
                .fetch_optional(&mut **tx)
                .await?;
                let reason = match last_error {
                    Some(row) => format!(
                        "{reason}; last host error ({}): {}",
                        row.try_get::<Option<String>, _>("error_kind")?
                            .unwrap_or_default(),
                        row.try_get::<Option<String>, _>("error_message")?
                            .unwrap_or_default()
                    ),
                    None => reason,
                };
                self.error_unit_in(tx, unit_id, job_id, &reason, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// Hands the unit to the validator daemon (`store/validation.rs`).
    async fn want_validation_in(&self, tx: &mut Tx, unit_id: i64) -> Result<()> {
        sqlx::query("UPDATE units SET needs_validator = 1 WHERE id = $1")
            .bind(unit_id)
            .execute(&mut **tx)
            .await?;
        self.validation_wanted.notify_one();
        Ok(())
    }

    /// Whether a quorum is made of new hosts only (none proven for the
    /// module now) while a proven host is active to confirm it. Colluders
    /// start as new hosts; a quorum of them is how a wrong answer would
    /// otherwise pass before honest hosts have a record. Not for a unit
    /// one host returned alone (trusted), nor when no proven host is about
    /// (a small project of new hosts must still finish its jobs).
    async fn only_new_hosts_agree(
        &self,
        tx: &mut Tx,
        valid: &[i64],
        rows: &[ResultRow],
        module: &[u8],
        now: i64,
    ) -> Result<bool> {
        if valid.len() < 2 || !self.proven_active(module, now) {
            return Ok(false);
        }
        for id in valid {
            let Some(host_id) = rows
                .iter()
                .find(|r| r.view.id == *id)
                .and_then(|r| r.host_id)
            else {
                continue;
            };
            if self
                .policy
                .is_proven(self.trust_in(tx, host_id, module).await?)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The unit's results as the decision sees them; None if a numeric
    /// stdout it needs was not read beforehand.
    async fn result_rows_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        agreement: Agreement,
        stdouts: &Stdouts,
    ) -> Result<Option<Vec<ResultRow>>> {
        let rows = sqlx::query(
            "SELECT id, state, outcome, validate_state, digest, output, fuel_used, host_id, credit,
                    agreement_group
             FROM results WHERE unit_id = $1 ORDER BY id",
        )
        .bind(unit_id)
        .fetch_all(&mut **tx)
        .await?;
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            let state = match (
                row.try_get::<String, _>("state")?.as_str(),
                row.try_get::<Option<String>, _>("outcome")?.as_deref(),
                row.try_get::<String, _>("validate_state")?.as_str(),
            ) {
                ("unsent", _, _) => ResultState::Unsent,
                ("in_progress", _, _) => ResultState::InProgress,
                // A claim refused at report time (fuel above the limit)
                // counts as a failed result.
                ("reported", Some("success"), "invalid") => ResultState::ClientError,
                ("reported", Some("success"), _) => ResultState::Success,
                ("reported", _, _) => ResultState::ClientError,
                ("timed_out", _, _) => ResultState::TimedOut,
                _ => ResultState::Aborted,
            };
            let (digest, stdout) = match (state, agreement) {
                (ResultState::Success, Agreement::Numeric { .. }) => {
                    match numeric_view(row.try_get("output")?, stdouts)? {
                        Some(view) => view,
                        None => return Ok(None),
                    }
                }
                _ => (row.try_get("digest")?, None),
            };
            let fuel_used = row
                .try_get::<Option<i64>, _>("fuel_used")?
                .unwrap_or(0)
                .max(0) as u64;
            results.push(ResultRow {
                view: ResultView {
                    id: row.try_get("id")?,
                    state,
                    digest,
                    stdout,
                    fuel_used,
                    group: row.try_get("agreement_group")?,
                },
                host_id: row.try_get("host_id")?,
                credit: row.try_get("credit")?,
            });
        }
        Ok(Some(results))
    }

    /// Pays what hosts earned on their word alone before they last passed
    /// a check. Its own transaction (the sweep calls it every second), so
    /// a transition never locks other units' results for it.
    pub async fn release_deferred_credit(&self) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let owed = sqlx::query(&format!(
            "SELECT r.id, r.fuel_used FROM results r JOIN hosts h ON h.id = r.host_id
             WHERE r.credit = 'deferred' AND r.validate_state = 'valid' AND r.reported_ms <= h.checked_ms
             ORDER BY r.id LIMIT 1000{}",
            self.db.skip_locked("r")
        ))
        .fetch_all(&mut *tx)
        .await?;
        let mut ledger = Ledger::default();
        for row in &owed {
            let fuel = row
                .try_get::<Option<i64>, _>("fuel_used")?
                .unwrap_or(0)
                .max(0) as u64;
            ledger
                .grants
                .push((row.try_get("id")?, credit::for_fuel(fuel)));
        }
        let now = cobble_core::now_ms();
        self.settle_in(&mut tx, ledger, now).await?;
        tx.commit().await?;
        Ok(owed.len() as u64)
    }

    /// Settles a transaction's ledger: applies it, then verifies again what
    /// the hosts it caught returned alone. Called once per transaction, last.
    pub(super) async fn settle_in(&self, tx: &mut Tx, ledger: Ledger, now: i64) -> Result<()> {
        self.apply_ledger_in(tx, &ledger, now).await?;
        for host_id in &ledger.caught {
            self.reverify_host_in(tx, *host_id, now).await?;
        }
        Ok(())
    }

    /// Applies a ledger: result rows first, then hosts, accounts and teams
    /// each in id order.
    async fn apply_ledger_in(&self, tx: &mut Tx, ledger: &Ledger, now: i64) -> Result<()> {
        // (rank, id) -> (credit delta, valid-results delta, rac delta source)
        let mut owners: BTreeMap<(usize, i64), (f64, i64, f64)> = BTreeMap::new();
        let mut add_owner =
            |owner: &sqlx::any::AnyRow, amount: f64, count: i64, grant: f64| -> Result<()> {
                for (rank, column) in ["host_id", "account_id", "team_id"].iter().enumerate() {
                    if let Some(id) = owner.try_get::<Option<i64>, _>(*column)? {
                        let entry = owners.entry((rank, id)).or_default();
                        entry.0 += amount;
                        entry.1 += count;
                        entry.2 += grant;
                    }
                }
                Ok(())
            };
        for (result_id, amount) in &ledger.grants {
            let granted = sqlx::query(
                "UPDATE results SET credit = 'granted', granted_credit = $1
                 WHERE id = $2 AND credit IN ('none', 'deferred')",
            )
            .bind(amount)
            .bind(result_id)
            .execute(&mut **tx)
            .await?;
            if granted.rows_affected() == 1 {
                add_owner(&owner_of(tx, *result_id).await?, *amount, 1, *amount)?;
            }
        }
        for result_id in &ledger.revokes {
            let amount: Option<f64> = sqlx::query_scalar(
                "UPDATE results SET credit = 'revoked', revoked_credit = granted_credit, granted_credit = 0
                 WHERE id = $1 AND credit = 'granted' RETURNING revoked_credit",
            )
            .bind(result_id)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(amount) = amount {
                tracing::warn!(
                    result_id,
                    amount,
                    "credit taken back from a result found invalid"
                );
                add_owner(&owner_of(tx, *result_id).await?, -amount, -1, 0.0)?;
            }
        }
        // Hosts' trust and quota first, in host order, beside their credit.
        let mut hosts: Vec<i64> = ledger.outcomes.keys().copied().collect();
        hosts.extend(
            owners
                .keys()
                .filter(|(rank, _)| *rank == 0)
                .map(|(_, id)| *id),
        );
        hosts.extend(&ledger.passed);
        hosts.sort_unstable();
        hosts.dedup();
        for host_id in hosts {
            if let Some(outcomes) = ledger.outcomes.get(&host_id) {
                self.host_outcomes_in(tx, host_id, outcomes).await?;
            }
            if ledger.passed.contains(&host_id) {
                sqlx::query("UPDATE hosts SET checked_ms = $1 WHERE id = $2")
                    .bind(now)
                    .bind(host_id)
                    .execute(&mut **tx)
                    .await?;
            }
            if let Some(delta) = owners.remove(&(0, host_id)) {
                self.apply_credit_in(tx, "hosts", host_id, delta, now)
                    .await?;
            }
        }
        for ((rank, id), delta) in owners {
            self.apply_credit_in(tx, ["hosts", "accounts", "teams"][rank], id, delta, now)
                .await?;
        }
        Ok(())
    }

    /// Moves a host's trust for a module and its daily quota with outcomes.
    async fn host_outcomes_in(
        &self,
        tx: &mut Tx,
        host_id: i64,
        outcomes: &[(Vec<u8>, Outcome)],
    ) -> Result<()> {
        let row = sqlx::query(&format!(
            "SELECT cpus, daily_quota FROM hosts WHERE id = $1{}",
            self.db.for_update_of("hosts")
        ))
        .bind(host_id)
        .fetch_one(&mut **tx)
        .await?;
        let cpus = u32::try_from(row.try_get::<i64, _>("cpus")?.max(0)).unwrap_or(u32::MAX);
        let mut quota =
            u32::try_from(row.try_get::<i64, _>("daily_quota")?.max(1)).unwrap_or(u32::MAX);
        for (module, outcome) in outcomes {
            quota = self.policy.quota_after(quota, cpus, *outcome);
            let current = self.trust_in(tx, host_id, module).await?;
            let next = integrity::trust_after(current, *outcome);
            sqlx::query(
                "INSERT INTO host_trust (host_id, module, consecutive_valid) VALUES ($1, $2, $3)
                 ON CONFLICT (host_id, module) DO UPDATE SET consecutive_valid = excluded.consecutive_valid",
            )
            .bind(host_id)
            .bind(module)
            .bind(i64::from(next))
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query("UPDATE hosts SET daily_quota = $1 WHERE id = $2")
            .bind(i64::from(quota))
            .bind(host_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Punitive validation: every unit accepted on this host's word alone
    /// goes back to pending with one more replica; its job runs again
    /// until the check is decided.
    async fn reverify_host_in(&self, tx: &mut Tx, host_id: i64, now: i64) -> Result<()> {
        let rows = sqlx::query(
            "SELECT u.id AS unit_id, u.job_id, r.id AS result_id, j.min_quorum, j.module_hash
             FROM results r JOIN units u ON u.canonical_result_id = r.id JOIN jobs j ON j.id = u.job_id
             WHERE r.host_id = $1 AND u.state = 'done' AND u.replicated = 0 AND j.state IN ('running', 'done')",
        )
        .bind(host_id)
        .fetch_all(&mut **tx)
        .await?;
        for row in &rows {
            let unit_id: i64 = row.try_get("unit_id")?;
            let job_id: i64 = row.try_get("job_id")?;
            let min_quorum: i64 = row.try_get("min_quorum")?;
            let module: Vec<u8> = row.try_get("module_hash")?;
            let quorum = min_quorum.max(2);
            sqlx::query(
                "UPDATE units SET state = 'pending', quorum = $1, replicated = NULL, finished_ms = NULL
                 WHERE id = $2 AND state = 'done'",
            )
            .bind(quorum)
            .bind(unit_id)
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE results SET validate_state = 'pending' WHERE id = $1")
                .bind(row.try_get::<i64, _>("result_id")?)
                .execute(&mut **tx)
                .await?;
            self.add_replicas_in(tx, unit_id, &module, quorum as u32, Reserve::Always, now)
                .await?;
            sqlx::query(
                "UPDATE jobs SET state = 'running', finished_ms = NULL WHERE id = $1 AND state = 'done'",
            )
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
        }
        if !rows.is_empty() {
            tracing::warn!(
                host_id,
                units = rows.len(),
                "host caught: its unreplicated results are verified again"
            );
            self.notify_work_added();
        }
        Ok(())
    }

    /// After a unit ends: drop its unsent replicas, end the job if it was the last.
    /// Gives up on a unit: no quorum can form, or its validator fails.
    pub(super) async fn error_unit_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        job_id: i64,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE units SET state = 'errored', error = $1, finished_ms = $2 WHERE id = $3",
        )
        .bind(reason)
        .bind(now)
        .bind(unit_id)
        .execute(&mut **tx)
        .await?;
        self.close_unit_in(tx, unit_id, job_id, now).await?;
        tracing::warn!(unit_id, %reason, "unit errored");
        Ok(())
    }

    pub(super) async fn close_unit_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        job_id: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query("UPDATE results SET state = 'aborted' WHERE unit_id = $1 AND state = 'unsent'")
            .bind(unit_id)
            .execute(&mut **tx)
            .await?;
        // Two transactions closing a job's last two units must not each see
        // the other's unit still pending (write skew under PostgreSQL's read
        // committed), so near the end of a job they take its row lock in
        // turn (`finish_job_in`) and count again. Far from the end, no
        // transaction can miss the end: that needs more transactions at
        // once than `NEAR_THE_END` (pools are far smaller), and the sweep's
        // `finish_jobs` is the net beneath. Why not always lock and count:
        // that serialized every unit of a job on one row, and the count grew
        // with the job.
        const NEAR_THE_END: i64 = 256;
        let pending: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM (SELECT id FROM units
                 WHERE job_id = $1 AND state = 'pending' AND known_digest IS NULL LIMIT {NEAR_THE_END}) p"
        ))
        .bind(job_id)
        .fetch_one(&mut **tx)
        .await?;
        if pending < NEAR_THE_END {
            self.finish_job_in(tx, job_id, now).await?;
        }
        Ok(())
    }

    /// Ends a running job none of whose units is pending: under its row
    /// lock, checked again, so that it ends once.
    pub(super) async fn finish_job_in(&self, tx: &mut Tx, job_id: i64, now: i64) -> Result<bool> {
        let running: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT id FROM jobs WHERE id = $1 AND state = 'running'{}",
            self.db.for_update_of("jobs")
        ))
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
        let pending: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM units WHERE job_id = $1 AND state = 'pending' AND known_digest IS NULL LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
        if running.is_none() || pending.is_some() {
            return Ok(false);
        }
        if !self.reduce_ready_in(tx, job_id, now).await? {
            return Ok(false);
        }
        // Known-answer units check hosts only while the job runs.
        sqlx::query(
            "UPDATE results SET state = 'aborted' WHERE state = 'unsent' AND unit_id IN (
                 SELECT id FROM units WHERE job_id = $1 AND known_digest IS NOT NULL)",
        )
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "UPDATE units SET state = 'done', finished_ms = $1
             WHERE job_id = $2 AND known_digest IS NOT NULL AND state = 'pending'",
        )
        .bind(now)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE jobs SET state = 'done', finished_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
        tracing::info!(job_id, "job done");
        Ok(true)
    }

    /// Whether a job none of whose units is pending may end, as far as its
    /// `[reduce]` step goes. With one, and every unit done: first every
    /// unit accepted from a single trusted host is checked by a quorum
    /// (a reduce must not rest on one host's word, which a later catch
    /// could overturn), then the reduce unit is made, its inputs every
    /// unit's canonical stdout and files under `INDEX/` (with the job's
    /// shared inputs and the step's own files), and issued like
    /// any other. The job ends when it is done or errored. A unit that
    /// errored means no reduce: it would assemble a partial result.
    async fn reduce_ready_in(&self, tx: &mut Tx, job_id: i64, now: i64) -> Result<bool> {
        let spec: Vec<u8> = sqlx::query_scalar("SELECT spec FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
        let spec = pb::JobSpec::decode(spec.as_slice())
            .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
        let Some(reduce) = spec.reduce else {
            return Ok(true);
        };
        let existing: Option<String> =
            sqlx::query_scalar("SELECT state FROM units WHERE job_id = $1 AND is_reduce = 1")
                .bind(job_id)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some(state) = existing {
            return Ok(state != "pending");
        }
        let rows = sqlx::query(
            "SELECT u.id, u.idx, u.state, u.replicated, j.min_quorum, j.module_hash, r.output
             FROM units u JOIN jobs j ON j.id = u.job_id
             LEFT JOIN results r ON r.id = u.canonical_result_id
             WHERE u.job_id = $1 AND u.known_digest IS NULL AND u.is_reduce = 0
             ORDER BY u.idx",
        )
        .bind(job_id)
        .fetch_all(&mut **tx)
        .await?;
        if rows
            .iter()
            .any(|row| row.try_get::<String, _>("state").is_ok_and(|s| s != "done"))
        {
            return Ok(true);
        }
        let mut checking = false;
        for row in &rows {
            if row.try_get::<Option<i64>, _>("replicated")? == Some(0) {
                let unit_id: i64 = row.try_get("id")?;
                let quorum = row.try_get::<i64, _>("min_quorum")?.max(2);
                let module: Vec<u8> = row.try_get("module_hash")?;
                self.check_again_in(tx, unit_id, quorum, &module, now)
                    .await?;
                checking = true;
            }
        }
        if checking {
            return Ok(false);
        }
        // The job's shared inputs (a runtime job's script and packages),
        // the step's own, then every unit's outputs.
        let mut inputs = spec.inputs.clone();
        inputs.extend(reduce.inputs.iter().cloned());
        for row in &rows {
            let index: i64 = row.try_get("idx")?;
            let output: Option<Vec<u8>> = row.try_get("output")?;
            let output = pb::Success::decode(output.unwrap_or_default().as_slice())
                .map_err(|e| Error::Corrupt(format!("result output: {e}")))?;
            let files = output
                .stdout
                .map(|blob| ("stdout".to_string(), blob))
                .into_iter()
                .chain(
                    output
                        .files
                        .into_iter()
                        .filter_map(|f| f.blob.map(|blob| (f.name, blob))),
                );
            for (name, mut blob) in files {
                // Outputs carry no chunk list: workers fetch them whole
                // from the coordinator, checked against their hash.
                blob.chunk_root.clear();
                inputs.push(pb::NamedBlob {
                    name: format!("{index}/{name}"),
                    blob: Some(blob),
                });
            }
        }
        let bad_names =
            cobble_core::manifest::check_input_names(inputs.iter().map(|i| i.name.as_str())).err();
        // A module of its own travels in the payload with its signature and
        // the variables it sees; without one, the unit runs the job's.
        let env = match cobble_core::runtime::named(&reduce.runtime) {
            Some(runtime) => {
                let job_env: Vec<(String, String)> =
                    spec.env.into_iter().map(|v| (v.name, v.value)).collect();
                runtime
                    .with_env(&job_env)
                    .into_iter()
                    .map(|(name, value)| pb::EnvVar { name, value })
                    .collect()
            }
            None => spec.env,
        };
        let payload = pb::Manifest {
            args: reduce.args,
            inputs,
            env: if reduce.module.is_some() {
                env
            } else {
                Vec::new()
            },
            module: reduce.module,
            module_signature: reduce.module_signature,
            ..Default::default()
        };
        let unit_id: i64 = sqlx::query_scalar(
            "INSERT INTO units (job_id, idx, payload, state, created_ms, is_reduce)
             VALUES ($1, (SELECT COALESCE(MAX(idx), -1) + 1 FROM units WHERE job_id = $1), $2, 'pending', $3, 1)
             RETURNING id",
        )
        .bind(job_id)
        .bind(payload.encode_to_vec())
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        if let Some(problem) = bad_names {
            let reason = format!(
                "reduce: the units' outputs cannot all be its inputs: {problem} (at most 3 levels under /input/INDEX/, plain names, no file named stdout)"
            );
            sqlx::query(
                "UPDATE units SET state = 'errored', error = $1, finished_ms = $2 WHERE id = $3",
            )
            .bind(&reason)
            .bind(now)
            .bind(unit_id)
            .execute(&mut **tx)
            .await?;
            tracing::warn!(job_id, %reason, "no reduce unit");
            return Ok(true);
        }
        super::jobs::insert_unsent(tx, unit_id, now, super::jobs::READY_NOW).await?;
        self.notify_work_added();
        tracing::info!(job_id, unit_id, units = rows.len(), "reduce unit made");
        Ok(false)
    }

    /// Puts a unit accepted from one host back to a quorum's check, as a
    /// caught host's are (`reverify_host_in`).
    async fn check_again_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        quorum: i64,
        module: &[u8],
        now: i64,
    ) -> Result<()> {
        let canonical: Option<i64> = sqlx::query_scalar(
            "UPDATE units SET state = 'pending', quorum = $1, replicated = NULL, finished_ms = NULL
             WHERE id = $2 AND state = 'done' RETURNING canonical_result_id",
        )
        .bind(quorum)
        .bind(unit_id)
        .fetch_optional(&mut **tx)
        .await?
        .flatten();
        if let Some(result_id) = canonical {
            sqlx::query("UPDATE results SET validate_state = 'pending' WHERE id = $1")
                .bind(result_id)
                .execute(&mut **tx)
                .await?;
        }
        self.add_replicas_in(tx, unit_id, module, quorum as u32, Reserve::Always, now)
            .await?;
        self.notify_work_added();
        Ok(())
    }

    /// Ends the running jobs with no pending unit left: those two last
    /// reports at once each left to the other. The sweep calls it.
    pub async fn finish_jobs(&self) -> Result<u64> {
        let candidates: Vec<i64> = sqlx::query_scalar(
            "SELECT j.id FROM jobs j WHERE j.state = 'running' AND NOT EXISTS (
                 SELECT 1 FROM units u WHERE u.job_id = j.id AND u.state = 'pending' AND u.known_digest IS NULL)",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut finished = 0;
        for job_id in candidates {
            let mut tx = self.db.begin_write().await?;
            if self
                .finish_job_in(&mut tx, job_id, cobble_core::now_ms())
                .await?
            {
                finished += 1;
            }
            tx.commit().await?;
        }
        Ok(finished)
    }
}

/// Results that still count toward a unit's replicas: unsent, out, or
/// returned successfully.
fn live_results(views: &[ResultView]) -> u32 {
    views
        .iter()
        .filter(|v| {
            matches!(
                v.state,
                ResultState::Unsent | ResultState::InProgress | ResultState::Success
            )
        })
        .count() as u32
}

async fn owner_of(tx: &mut Tx, result_id: i64) -> Result<sqlx::any::AnyRow> {
    Ok(sqlx::query(
        "SELECT r.host_id, r.account_id, a.team_id FROM results r
         JOIN accounts a ON a.id = r.account_id WHERE r.id = $1",
    )
    .bind(result_id)
    .fetch_one(&mut **tx)
    .await?)
}

impl Store {
    /// Adds (or, negative, takes back) credit on one host, account or team.
    /// RAC grows only with grants; a take-back lowers the total at once and
    /// lets RAC decay. The row is read locked: RAC is written as a value
    /// computed from the one read, so two grants at once must not both read
    /// the old one (a lost update on PostgreSQL).
    async fn apply_credit_in(
        &self,
        tx: &mut Tx,
        table: &str,
        id: i64,
        (amount, count, granted): (f64, i64, f64),
        now: i64,
    ) -> Result<()> {
        let row = sqlx::query(&format!(
            "SELECT rac, rac_time_ms FROM {table} WHERE id = $1{}",
            self.db.for_update_of(table)
        ))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
        let rac = credit::rac_after_grant(
            row.try_get("rac")?,
            row.try_get("rac_time_ms")?,
            now,
            granted,
        );
        sqlx::query(&format!(
            "UPDATE {table} SET total_credit = total_credit + $1, rac = $2, rac_time_ms = $3,
                    valid_results = valid_results + $4, rac_key = $5 WHERE id = $6"
        ))
        .bind(amount)
        .bind(rac)
        .bind(now)
        .bind(count)
        .bind(credit::rac_order_key(rac, now))
        .bind(id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Numeric validators' stdouts, read before the transaction that decides
/// their unit (by the validator daemon): a transaction never waits on the
/// blob store, which may be a bucket across the network.
pub(super) type Stdouts = HashMap<BlobHash, Vec<u8>>;

/// A stdout larger than this is not a table of numbers: it compares by
/// its hash alone, and is never read.
pub(super) const MAX_NUMERIC_STDOUT: u64 = 16 << 20;

/// What a numeric validator compares: the digest of a success's files
/// alone, and its stdout's text (or hash, when too large to be numbers).
type NumericView = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A success's [`NumericView`], its stdout from `stdouts`; None when a
/// stdout that must be read is not there (the unit then goes to the
/// validator daemon, which reads it).
fn numeric_view(output: Option<Vec<u8>>, stdouts: &Stdouts) -> Result<Option<NumericView>> {
    let Some(output) = output else {
        return Ok(Some((None, None)));
    };
    let output = pb::Success::decode(output.as_slice())
        .map_err(|e| Error::Corrupt(format!("result output: {e}")))?;
    let Some(stdout) = output.stdout else {
        return Ok(Some((None, None)));
    };
    let files_digest = cobble_core::output::digest(&pb::BlobRef::default(), &output.files);
    if stdout.size > MAX_NUMERIC_STDOUT {
        return Ok(Some((Some(files_digest.to_vec()), Some(stdout.hash))));
    }
    Ok(stdouts
        .get(&BlobHash::from_slice(&stdout.hash)?)
        .map(|text| (Some(files_digest.to_vec()), Some(text.clone()))))
}
