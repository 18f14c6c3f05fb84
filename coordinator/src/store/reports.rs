//! Reports, timeouts and the transitioner: the path from a result coming
//! back to a validated unit and granted credit.
//!
//! A report is accepted only under the lease it was issued with; a repeat
//! changes nothing and gets the same answer; a report for a unit already
//! done, errored or cancelled changes nothing either (invariant 2). Credit
//! moves only when a result turns valid, which happens once (invariant 3).

use super::jobs::insert_unsent;
use super::{HostIdentity, Store};
use crate::credit;
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::validate::{self, Decision, ResultState, ResultView};
use cobble_core::BlobHash;
use cobble_core::agreement::Agreement;
use cobble_proto::v1::{self as pb, report_request::Outcome};
use prost::Message;
use sqlx::Row;

/// How a report was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportStatus {
    Accepted,
    /// The lease was already reported; nothing changed.
    Duplicate,
    /// The lease expired or its unit no longer needs results; kept, but
    /// neither validated nor credited.
    TooLate,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Accepted => "accepted",
            ReportStatus::Duplicate => "duplicate",
            ReportStatus::TooLate => "too_late",
        }
    }
}

impl Store {
    pub async fn report_result(
        &self,
        host: HostIdentity,
        request: &pb::ReportRequest,
    ) -> Result<ReportStatus> {
        let outcome = request
            .outcome
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("report has no outcome".into()))?;
        // Outputs are checked before the transaction: a missing upload is the
        // worker's to fix and retry, and must not change any state.
        let success = match outcome {
            Outcome::Success(success) => Some(self.checked_output(success).await?),
            Outcome::ClientError(_) => None,
        };
        let now = cobble_core::now_ms();
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(&format!(
            "SELECT r.id, r.unit_id, r.state, r.host_id, r.deadline_ms, u.state AS unit_state, j.state AS job_state
             FROM results r JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id
             WHERE r.lease_id = $1{}",
            self.db.for_update_of("r, u")
        ))
        .bind(&request.lease_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no lease {:?}", request.lease_id)))?;
        let result_id: i64 = row.try_get("id")?;
        let unit_id: i64 = row.try_get("unit_id")?;
        let state: String = row.try_get("state")?;
        if row.try_get::<Option<i64>, _>("host_id")? != Some(host.host_id) {
            return Err(Error::PermissionDenied(format!(
                "lease {:?} was issued to another host",
                request.lease_id
            )));
        }
        match state.as_str() {
            "reported" => return Ok(ReportStatus::Duplicate),
            "in_progress" => {}
            _ => return Ok(ReportStatus::TooLate),
        }
        if row.try_get::<Option<i64>, _>("deadline_ms")?.unwrap_or(0) < now {
            // The sweep has not caught it yet; the lease is over all the same.
            self.time_out_in(&mut tx, result_id, unit_id, now).await?;
            tx.commit().await?;
            return Ok(ReportStatus::TooLate);
        }
        let unit_open = row.try_get::<String, _>("unit_state")? == "pending"
            && row.try_get::<String, _>("job_state")? == "running";

        match (outcome, success) {
            (Outcome::Success(reported), Some((output, digest))) => {
                sqlx::query(
                    "UPDATE results SET state = 'reported', outcome = 'success', validate_state = $1,
                            reported_ms = $2, output = $3, digest = $4, fuel_used = $5, elapsed_ms = $6
                     WHERE id = $7",
                )
                .bind(if unit_open { "pending" } else { "not_needed" })
                .bind(now)
                .bind(output)
                .bind(digest.to_vec())
                .bind(i64::try_from(reported.fuel_used).unwrap_or(i64::MAX))
                .bind(i64::try_from(reported.elapsed_ms).unwrap_or(i64::MAX))
                .bind(result_id)
                .execute(&mut *tx)
                .await?;
            }
            (Outcome::ClientError(error), _) => {
                sqlx::query(
                    "UPDATE results SET state = 'reported', outcome = 'client_error', reported_ms = $1,
                            error_kind = $2, error_message = $3
                     WHERE id = $4",
                )
                .bind(now)
                .bind(truncate(&error.kind, 64))
                .bind(truncate(&error.message, 4096))
                .bind(result_id)
                .execute(&mut *tx)
                .await?;
            }
            (Outcome::Success(_), None) => unreachable!("success outputs are checked above"),
        }
        if !unit_open {
            tx.commit().await?;
            return Ok(ReportStatus::TooLate);
        }
        self.transition_in(&mut tx, unit_id, now).await?;
        tx.commit().await?;
        Ok(ReportStatus::Accepted)
    }

    /// Verifies that every blob a success names is stored with that size,
    /// and returns the encoded output and its digest.
    async fn checked_output(&self, success: &pb::Success) -> Result<(Vec<u8>, [u8; 32])> {
        let stdout = success
            .stdout
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("success without stdout blob".into()))?;
        let mut blobs = vec![("stdout", stdout)];
        for file in &success.files {
            let blob = file.blob.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("output file {:?} has no blob", file.name))
            })?;
            blobs.push((file.name.as_str(), blob));
        }
        for (name, blob) in blobs {
            let hash = BlobHash::from_slice(&blob.hash)?;
            if self.blobs.size_of(&hash).await != Some(blob.size) {
                return Err(Error::InvalidArgument(format!(
                    "output {name:?}: blob {hash} ({} bytes) is not uploaded; upload it, then report again",
                    blob.size
                )));
            }
        }
        let mut files = success.files.clone();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let canonical = pb::Success {
            stdout: success.stdout.clone(),
            files,
            fuel_used: 0,
            elapsed_ms: 0,
        };
        let digest = cobble_core::output::digest(stdout, &canonical.files);
        Ok((canonical.encode_to_vec(), digest))
    }

    /// Marks every overdue lease timed out and lets their units reissue.
    pub async fn expire_overdue(&self) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let expired = self
            .expire_overdue_in(&mut tx, cobble_core::now_ms())
            .await?;
        tx.commit().await?;
        Ok(expired)
    }

    pub(super) async fn expire_overdue_in(&self, tx: &mut Tx, now: i64) -> Result<u64> {
        let overdue = sqlx::query(
            "SELECT id, unit_id FROM results WHERE state = 'in_progress' AND deadline_ms < $1",
        )
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        for row in &overdue {
            self.time_out_in(tx, row.try_get("id")?, row.try_get("unit_id")?, now)
                .await?;
        }
        if !overdue.is_empty() {
            tracing::info!(count = overdue.len(), "leases timed out");
        }
        Ok(overdue.len() as u64)
    }

    async fn time_out_in(&self, tx: &mut Tx, result_id: i64, unit_id: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE results SET state = 'timed_out' WHERE id = $1 AND state = 'in_progress'",
        )
        .bind(result_id)
        .execute(&mut **tx)
        .await?;
        self.transition_in(tx, unit_id, now).await
    }

    /// Re-decides a pending unit from all its results and applies the decision.
    async fn transition_in(&self, tx: &mut Tx, unit_id: i64, now: i64) -> Result<()> {
        let unit = sqlx::query(&format!(
            "SELECT u.state, u.job_id, j.min_quorum, j.max_total_results, j.spec
             FROM units u JOIN jobs j ON j.id = u.job_id WHERE u.id = $1{}",
            self.db.for_update_of("u")
        ))
        .bind(unit_id)
        .fetch_one(&mut **tx)
        .await?;
        if unit.try_get::<String, _>("state")? != "pending" {
            return Ok(());
        }
        let job_id: i64 = unit.try_get("job_id")?;
        let replication = validate::Replication {
            min_quorum: unit.try_get::<i64, _>("min_quorum")? as u32,
            max_total_results: unit.try_get::<i64, _>("max_total_results")? as u32,
        };
        let rows = sqlx::query(
            "SELECT id, state, outcome, digest, output, fuel_used FROM results WHERE unit_id = $1 ORDER BY id",
        )
        .bind(unit_id)
        .fetch_all(&mut **tx)
        .await?;
        let spec: Vec<u8> = unit.try_get("spec")?;
        let spec = pb::JobSpec::decode(spec.as_slice())
            .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
        let agreement = Agreement::of(spec.validator.as_ref());
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            let state = match (
                row.try_get::<String, _>("state")?.as_str(),
                row.try_get::<Option<String>, _>("outcome")?.as_deref(),
            ) {
                ("unsent", _) => ResultState::Unsent,
                ("in_progress", _) => ResultState::InProgress,
                ("reported", Some("success")) => ResultState::Success,
                ("reported", _) => ResultState::ClientError,
                ("timed_out", _) => ResultState::TimedOut,
                _ => ResultState::Aborted,
            };
            let (digest, stdout) = match agreement {
                Agreement::Bitwise => (row.try_get("digest")?, None),
                Agreement::Numeric { .. } => self.numeric_view(row.try_get("output")?).await?,
            };
            results.push(ResultView {
                id: row.try_get("id")?,
                state,
                digest,
                stdout,
                fuel_used: row
                    .try_get::<Option<i64>, _>("fuel_used")?
                    .unwrap_or(0)
                    .max(0) as u64,
            });
        }

        match validate::decide(replication, agreement, &results) {
            Decision::Wait { new_results } => {
                for _ in 0..new_results {
                    insert_unsent(tx, unit_id, now).await?;
                }
            }
            Decision::Done {
                canonical,
                valid,
                invalid,
                credit,
            } => {
                for result_id in &invalid {
                    sqlx::query("UPDATE results SET validate_state = 'invalid' WHERE id = $1")
                        .bind(result_id)
                        .execute(&mut **tx)
                        .await?;
                }
                self.grant_credit_in(tx, &valid, credit, now).await?;
                sqlx::query(
                    "UPDATE units SET state = 'done', canonical_result_id = $1, finished_ms = $2 WHERE id = $3",
                )
                .bind(canonical)
                .bind(now)
                .bind(unit_id)
                .execute(&mut **tx)
                .await?;
                self.close_unit_in(tx, unit_id, job_id, now).await?;
                tracing::debug!(
                    unit_id,
                    valid = valid.len(),
                    invalid = invalid.len(),
                    "unit done"
                );
            }
            Decision::Errored { reason } => {
                sqlx::query(
                    "UPDATE units SET state = 'errored', error = $1, finished_ms = $2 WHERE id = $3",
                )
                .bind(&reason)
                .bind(now)
                .bind(unit_id)
                .execute(&mut **tx)
                .await?;
                self.close_unit_in(tx, unit_id, job_id, now).await?;
                tracing::warn!(unit_id, %reason, "unit errored");
            }
        }
        Ok(())
    }

    /// For a numeric validator: the digest of a success's files alone, and
    /// its stdout, read from the blob store (capped: a huge stdout is not a
    /// table of numbers, and then compares by its hash only).
    async fn numeric_view(
        &self,
        output: Option<Vec<u8>>,
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        const MAX_NUMERIC_STDOUT: u64 = 16 << 20;
        let Some(output) = output else {
            return Ok((None, None));
        };
        let output = pb::Success::decode(output.as_slice())
            .map_err(|e| Error::Corrupt(format!("result output: {e}")))?;
        let Some(stdout) = output.stdout else {
            return Ok((None, None));
        };
        let files_digest = cobble_core::output::digest(&pb::BlobRef::default(), &output.files);
        let text = if stdout.size <= MAX_NUMERIC_STDOUT {
            self.blobs
                .read(&BlobHash::from_slice(&stdout.hash)?)
                .await?
        } else {
            stdout.hash
        };
        Ok((Some(files_digest.to_vec()), Some(text)))
    }

    /// After a unit ends: drop its unsent replicas, end the job if it was the last.
    async fn close_unit_in(&self, tx: &mut Tx, unit_id: i64, job_id: i64, now: i64) -> Result<()> {
        sqlx::query("UPDATE results SET state = 'aborted' WHERE unit_id = $1 AND state = 'unsent'")
            .bind(unit_id)
            .execute(&mut **tx)
            .await?;
        // Two transactions closing a job's last two units must not each see
        // the other's unit still pending (write skew under PostgreSQL's read
        // committed): the job row lock makes the second wait for the first.
        sqlx::query(&format!(
            "SELECT id FROM jobs WHERE id = $1{}",
            self.db.for_update_of("jobs")
        ))
        .bind(job_id)
        .fetch_one(&mut **tx)
        .await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM units WHERE job_id = $1 AND state = 'pending'",
        )
        .bind(job_id)
        .fetch_one(&mut **tx)
        .await?;
        if pending == 0 {
            sqlx::query(
                "UPDATE jobs SET state = 'done', finished_ms = $1 WHERE id = $2 AND state = 'running'",
            )
            .bind(now)
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
            tracing::info!(job_id, "job done");
        }
        Ok(())
    }

    /// Marks results valid and credits their hosts, accounts and teams.
    /// Guarded by `validate_state = 'pending'`, so each happens only once.
    /// Credited rows are updated in one global order (hosts, accounts,
    /// teams, each by id) so concurrent grants on PostgreSQL cannot deadlock.
    async fn grant_credit_in(
        &self,
        tx: &mut Tx,
        valid: &[i64],
        credit: f64,
        now: i64,
    ) -> Result<()> {
        let mut owners: Vec<(usize, i64)> = Vec::new();
        for result_id in valid {
            let granted = sqlx::query(
                "UPDATE results SET validate_state = 'valid', granted_credit = $1
                 WHERE id = $2 AND validate_state = 'pending'",
            )
            .bind(credit)
            .bind(result_id)
            .execute(&mut **tx)
            .await?;
            if granted.rows_affected() != 1 {
                continue;
            }
            let owner = sqlx::query(
                "SELECT r.host_id, r.account_id, a.team_id FROM results r
                 JOIN accounts a ON a.id = r.account_id WHERE r.id = $1",
            )
            .bind(result_id)
            .fetch_one(&mut **tx)
            .await?;
            for (rank, column) in ["host_id", "account_id", "team_id"].iter().enumerate() {
                if let Some(id) = owner.try_get::<Option<i64>, _>(*column)? {
                    owners.push((rank, id));
                }
            }
        }
        owners.sort_unstable();
        for (rank, id) in owners {
            let table = ["hosts", "accounts", "teams"][rank];
            let row = sqlx::query(&format!(
                "SELECT rac, rac_time_ms FROM {table} WHERE id = $1"
            ))
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
            let rac = credit::rac_after_grant(
                row.try_get("rac")?,
                row.try_get("rac_time_ms")?,
                now,
                credit,
            );
            sqlx::query(&format!(
                "UPDATE {table} SET total_credit = total_credit + $1, rac = $2, rac_time_ms = $3,
                        valid_results = valid_results + 1 WHERE id = $4"
            ))
            .bind(credit)
            .bind(rac)
            .bind(now)
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Records the progress a host reports for its leases.
    pub async fn record_progress(
        &self,
        host: HostIdentity,
        progress: &[pb::LeaseProgress],
    ) -> Result<()> {
        for lease in progress.iter().take(256) {
            if !lease.fraction.is_finite() {
                continue;
            }
            sqlx::query(
                "UPDATE results SET progress = $1 WHERE lease_id = $2 AND host_id = $3 AND state = 'in_progress'",
            )
            .bind(lease.fraction.clamp(0.0, 1.0))
            .bind(&lease.lease_id)
            .bind(host.host_id)
            .execute(self.db.pool())
            .await?;
        }
        Ok(())
    }

    /// Which of the leases a host says it is running it should abandon.
    pub async fn leases_to_abort(
        &self,
        host: HostIdentity,
        running: &[String],
    ) -> Result<Vec<String>> {
        let mut abort = Vec::new();
        for lease in running.iter().take(256) {
            let row = sqlx::query(
                "SELECT r.state, r.host_id, u.state AS unit_state, j.state AS job_state
                 FROM results r JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id
                 WHERE r.lease_id = $1",
            )
            .bind(lease)
            .fetch_optional(self.db.pool())
            .await?;
            let keep = match row {
                Some(row) => {
                    row.try_get::<Option<i64>, _>("host_id")? == Some(host.host_id)
                        && row.try_get::<String, _>("state")? == "in_progress"
                        && row.try_get::<String, _>("unit_state")? == "pending"
                        && row.try_get::<String, _>("job_state")? == "running"
                }
                None => false,
            };
            if !keep {
                abort.push(lease.clone());
            }
        }
        Ok(abort)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
