//! Reports and timeouts: the path from a result coming back (or not) to
//! the transitioner (`transition.rs`).
//!
//! A report is accepted only under the lease it was issued with; a repeat
//! changes nothing and gets the same answer; a report for a unit already
//! done, errored or cancelled changes nothing either (invariant 2). Credit
//! moves only when a result turns valid, which happens once (invariant 3).

use super::transition::{Ledger, Stdouts};
use super::{HostIdentity, Store};
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::integrity;
use cobble_core::BlobHash;
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

/// Reports one call may carry: enough to amortize a transaction, few
/// enough that one call's transaction stays short.
pub const MAX_REPORTS_PER_BATCH: usize = 64;
pub use cobble_core::output::{MAX_INLINE_BYTES, MAX_INLINE_BYTES_PER_REPORT};

/// A report whose outputs were checked before any transaction.
struct Checked<'a> {
    request: &'a pb::ReportRequest,
    outcome: &'a Outcome,
    /// For a success: its canonical encoding and digest.
    success: Option<(Vec<u8>, [u8; 32])>,
}

impl Store {
    /// Takes one report. A refusal (unknown lease, another host's, bad
    /// output) is the error; nothing was recorded.
    pub async fn report_result(
        &self,
        host: HostIdentity,
        request: &pb::ReportRequest,
    ) -> Result<ReportStatus> {
        self.report_results(host, std::slice::from_ref(request))
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::InvalidArgument("no report".into())))
    }

    /// Takes several reports of one host in one transaction, with one
    /// settlement of trust, quota and credit. Each report's own refusal is
    /// its entry in the answer, and changes nothing; an error of the whole
    /// call (the database) means none was recorded.
    pub async fn report_results(
        &self,
        host: HostIdentity,
        requests: &[pb::ReportRequest],
    ) -> Result<Vec<Result<ReportStatus>>> {
        if requests.len() > MAX_REPORTS_PER_BATCH {
            return Err(Error::InvalidArgument(format!(
                "{} reports in one call; at most {MAX_REPORTS_PER_BATCH} are taken",
                requests.len()
            )));
        }
        // Outputs are checked before the transaction: a missing upload or a
        // bad name is the worker's to fix, and must not change any state.
        let mut checked = Vec::with_capacity(requests.len());
        let mut inline = Vec::new();
        for request in requests {
            checked.push(self.checked_report(request, &mut inline).await);
        }
        // Inline outputs first, committed on their own: rows keyed by hash
        // that replicas of one unit insert alike, which inside the report's
        // transaction could wait on each other across unit locks. One the
        // report then refuses is unreferenced, and collected as uploads are.
        self.store_small_blobs(&inline).await?;
        // Units in id order, so that two batches lock shared units' rows in
        // one order (PostgreSQL) and never deadlock.
        let mut order: Vec<usize> = (0..requests.len()).collect();
        let units = self.units_of_leases(requests).await?;
        order.sort_by_key(|i| {
            units
                .get(&requests[*i].lease_id)
                .copied()
                .unwrap_or(i64::MAX)
        });

        let now = cobble_core::now_ms();
        let mut tx = self.db.begin_write().await?;
        let mut ledger = Ledger::default();
        let mut answers: Vec<Option<Result<ReportStatus>>> =
            (0..requests.len()).map(|_| None).collect();
        let mut checked: Vec<Option<Result<Checked<'_>>>> = checked.into_iter().map(Some).collect();
        for index in order {
            let answer = match checked[index].take() {
                Some(Ok(report)) => match self
                    .report_in(&mut tx, host, report, now, &mut ledger)
                    .await
                {
                    Err(error) if !error.is_refusal() => return Err(error),
                    answer => answer,
                },
                Some(Err(refused)) => Err(refused),
                None => Err(Error::InvalidArgument("report taken twice".into())),
            };
            answers[index] = Some(answer);
        }
        self.settle_in(&mut tx, ledger, now).await?;
        tx.commit().await?;
        Ok(answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(Error::InvalidArgument("report not taken".into()))))
            .collect())
    }

    /// The checks a report passes before any transaction: an outcome, and
    /// for a success outputs that are stored or sent inline (collected
    /// into `inline`, verified against the hashes they claim).
    async fn checked_report<'a>(
        &self,
        request: &'a pb::ReportRequest,
        inline: &mut Vec<(BlobHash, &'a [u8])>,
    ) -> Result<Checked<'a>> {
        let outcome = request
            .outcome
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("report has no outcome".into()))?;
        let success = match outcome {
            Outcome::Success(success) => Some(self.checked_output(success, inline).await?),
            Outcome::ClientError(_) => None,
        };
        Ok(Checked {
            request,
            outcome,
            success,
        })
    }

    /// The unit of each lease, read without locks: only to order a batch.
    async fn units_of_leases(
        &self,
        requests: &[pb::ReportRequest],
    ) -> Result<std::collections::HashMap<String, i64>> {
        let mut units = std::collections::HashMap::new();
        if requests.len() < 2 {
            return Ok(units);
        }
        let placeholders: Vec<String> = (1..=requests.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT lease_id, unit_id FROM results WHERE lease_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for request in requests {
            query = query.bind(&request.lease_id);
        }
        for row in query.fetch_all(self.db.pool()).await? {
            units.insert(row.try_get("lease_id")?, row.try_get("unit_id")?);
        }
        Ok(units)
    }

    /// Keeps inline outputs, each once (replicas send the same bytes).
    async fn store_small_blobs(&self, blobs: &[(BlobHash, &[u8])]) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        // Replicas in one batch may send the same bytes: each row once.
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&(BlobHash, &[u8])> =
            blobs.iter().filter(|(h, _)| seen.insert(*h)).collect();
        let rows: Vec<String> = (0..unique.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        let sql = format!(
            "INSERT INTO small_blobs (hash, bytes, created_ms) VALUES {} ON CONFLICT (hash) DO NOTHING",
            rows.join(", ")
        );
        let now = cobble_core::now_ms();
        let mut query = sqlx::query(&sql);
        for (hash, bytes) in unique {
            query = query.bind(hash.0.to_vec()).bind(bytes.to_vec()).bind(now);
        }
        query.execute(self.db.writes()).await?;
        Ok(())
    }

    /// One report inside a batch's transaction. Refusals come before any
    /// write, so a refused report leaves the transaction as it found it.
    async fn report_in(
        &self,
        tx: &mut Tx,
        host: HostIdentity,
        report: Checked<'_>,
        now: i64,
        ledger: &mut Ledger,
    ) -> Result<ReportStatus> {
        let Checked {
            request,
            outcome,
            success,
        } = report;
        let row = sqlx::query(&format!(
            "SELECT r.id, r.unit_id, r.state, r.host_id, r.deadline_ms, u.state AS unit_state,
                    j.state AS job_state, j.spec, j.module_hash, u.known_digest, u.known_fuel
             FROM results r JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id
             WHERE r.lease_id = $1{}",
            self.db.for_update_of("r, u")
        ))
        .bind(&request.lease_id)
        .fetch_optional(&mut **tx)
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
            self.time_out_in(tx, result_id, unit_id, now, ledger)
                .await?;
            return Ok(ReportStatus::TooLate);
        }
        let unit_open = row.try_get::<String, _>("unit_state")? == "pending"
            && row.try_get::<String, _>("job_state")? == "running";
        let module: Vec<u8> = row.try_get("module_hash")?;
        let spec: Vec<u8> = row.try_get("spec")?;
        let fuel_limit = pb::JobSpec::decode(spec.as_slice())
            .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?
            .limits
            .map_or(cobble_core::spec::DEFAULT_FUEL, |l| l.fuel);

        let known_digest: Option<Vec<u8>> = row.try_get("known_digest")?;
        let known_fuel = row.try_get::<i64, _>("known_fuel")?.max(0) as u64;

        match (outcome, success) {
            (Outcome::Success(reported), Some((output, digest))) => {
                // Invariant 9: no claim beyond what the job allows. A unit
                // cannot burn more fuel than its limit, so such a claim is a
                // lie, refused like a wrong answer.
                let overclaim = reported.fuel_used > fuel_limit;
                // A known answer is judged at once, even after the job ends:
                // the host did the work, and its answer tells on it.
                let known_match = known_digest.as_ref().map(|k| k[..] == digest[..]);
                let validate_state = match (overclaim, known_match, unit_open) {
                    (true, _, _) | (false, Some(false), _) => "invalid",
                    (false, Some(true), _) => "valid",
                    (false, None, true) => "pending",
                    (false, None, false) => "not_needed",
                };
                sqlx::query(
                    "UPDATE results SET state = 'reported', outcome = 'success', validate_state = $1,
                            reported_ms = $2, output = $3, digest = $4, fuel_used = $5, elapsed_ms = $6,
                            error_message = $7
                     WHERE id = $8",
                )
                .bind(validate_state)
                .bind(now)
                .bind(output)
                .bind(digest.to_vec())
                .bind(i64::try_from(reported.fuel_used).unwrap_or(i64::MAX))
                .bind(i64::try_from(reported.elapsed_ms).unwrap_or(i64::MAX))
                .bind(overclaim.then(|| {
                    format!(
                        "claimed {} fuel, above the unit's limit of {fuel_limit}",
                        reported.fuel_used
                    )
                }))
                .bind(result_id)
                .execute(&mut **tx)
                .await?;
                if overclaim {
                    tracing::warn!(
                        host_id = host.host_id,
                        result_id,
                        fuel = reported.fuel_used,
                        "fuel claim above the limit refused"
                    );
                    ledger.outcome(host.host_id, &module, integrity::Outcome::Invalid);
                } else if let Some(matched) = known_match {
                    let passed = match matched {
                        true => Some(
                            self.known_answer_credit_in(
                                tx,
                                unit_id,
                                reported.fuel_used,
                                known_fuel,
                            )
                            .await?,
                        ),
                        false => None,
                    };
                    tracing::info!(
                        host_id = host.host_id,
                        result_id,
                        passed = matched,
                        "known-answer check"
                    );
                    ledger.known_answer(host.host_id, &module, result_id, passed);
                }
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
                .execute(&mut **tx)
                .await?;
                ledger.outcome(host.host_id, &module, integrity::Outcome::Failed);
            }
            (Outcome::Success(_), None) => unreachable!("success outputs are checked above"),
        }
        if unit_open && known_digest.is_none() {
            // No stdout read here: a report never waits on the blob store
            // inside its transaction (numeric units go to the daemon).
            self.transition_in(tx, unit_id, now, ledger, &Stdouts::new())
                .await?;
        }
        Ok(if unit_open {
            ReportStatus::Accepted
        } else {
            ReportStatus::TooLate
        })
    }

    /// Credit for a passed known-answer check: from the host's fuel claim,
    /// capped at the fuel the researcher gave, else at the lowest claim any
    /// host that passed this check made, so one host cannot inflate it.
    async fn known_answer_credit_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        claimed: u64,
        known_fuel: u64,
    ) -> Result<f64> {
        let cap = if known_fuel > 0 {
            known_fuel
        } else {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT MIN(fuel_used) FROM results WHERE unit_id = $1 AND validate_state = 'valid'",
            )
            .bind(unit_id)
            .fetch_one(&mut **tx)
            .await?
            .map_or(u64::MAX, |fuel| fuel.max(0) as u64)
        };
        Ok(crate::credit::for_fuel(claimed.min(cap)))
    }

    /// The largest output a host may upload now: the biggest
    /// `max_output_bytes` among the jobs of the units it holds, or None if
    /// it holds none.
    pub async fn output_allowance(&self, host_id: i64) -> Result<Option<u64>> {
        let specs: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT spec FROM jobs WHERE id IN (
                 SELECT u.job_id FROM results r JOIN units u ON u.id = r.unit_id
                 WHERE r.host_id = $1 AND r.state = 'in_progress')",
        )
        .bind(host_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut allowance = None;
        for spec in specs {
            let spec = pb::JobSpec::decode(spec.as_slice())
                .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
            let limit = spec
                .limits
                .map_or(cobble_core::spec::DEFAULT_MAX_OUTPUT_BYTES, |l| {
                    l.max_output_bytes
                });
            allowance = Some(allowance.map_or(limit, |a: u64| a.max(limit)));
        }
        Ok(allowance)
    }

    /// Verifies that every blob a success names is stored with that size,
    /// or sent inline (added to `inline`), and that every output name is a
    /// plain relative name, once; returns the encoded output and its digest.
    async fn checked_output<'a>(
        &self,
        success: &'a pb::Success,
        inline: &mut Vec<(BlobHash, &'a [u8])>,
    ) -> Result<(Vec<u8>, [u8; 32])> {
        /// More output files than any unit needs; bounds the work a report costs.
        const MAX_OUTPUT_FILES: usize = 4_096;
        let stdout = success
            .stdout
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("success without stdout blob".into()))?;
        if success.files.len() > MAX_OUTPUT_FILES {
            return Err(Error::InvalidArgument(format!(
                "{} output files; at most {MAX_OUTPUT_FILES} are accepted",
                success.files.len()
            )));
        }
        let mut names = std::collections::HashSet::new();
        let mut blobs = vec![("stdout", stdout)];
        for file in &success.files {
            if !cobble_core::output::is_plain_name(&file.name) {
                return Err(Error::InvalidArgument(format!(
                    "output file name {:?} is not a plain relative name (no `..`, no leading `/`, no control characters)",
                    file.name
                )));
            }
            if !names.insert(file.name.as_str()) {
                return Err(Error::InvalidArgument(format!(
                    "output file {:?} is listed twice",
                    file.name
                )));
            }
            let blob = file.blob.as_ref().ok_or_else(|| {
                Error::InvalidArgument(format!("output file {:?} has no blob", file.name))
            })?;
            blobs.push((file.name.as_str(), blob));
        }
        let sent = self.checked_inline(success, &blobs)?;
        for (name, blob) in blobs {
            let hash = BlobHash::from_slice(&blob.hash)?;
            if sent.iter().any(|(inline, _)| *inline == hash) {
                continue;
            }
            if self.blob_size(&hash).await? != Some(blob.size) {
                return Err(Error::InvalidArgument(format!(
                    "output {name:?}: blob {hash} ({} bytes) is not uploaded; upload it, then report again",
                    blob.size
                )));
            }
        }
        inline.extend(sent);
        let mut files = success.files.clone();
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let canonical = pb::Success {
            stdout: success.stdout.clone(),
            files,
            fuel_used: 0,
            elapsed_ms: 0,
            inline: Vec::new(),
        };
        let digest = cobble_core::output::digest(stdout, &canonical.files);
        Ok((canonical.encode_to_vec(), digest))
    }

    /// A success's inline outputs with their hashes (computed once here),
    /// each of which must be small and the bytes of one of the outputs it
    /// names.
    fn checked_inline<'a>(
        &self,
        success: &'a pb::Success,
        named: &[(&str, &pb::BlobRef)],
    ) -> Result<Vec<(BlobHash, &'a [u8])>> {
        let total: usize = success.inline.iter().map(Vec::len).sum();
        if total > MAX_INLINE_BYTES_PER_REPORT {
            return Err(Error::InvalidArgument(format!(
                "{total} bytes of inline outputs; at most {MAX_INLINE_BYTES_PER_REPORT} per report (upload the rest)"
            )));
        }
        let mut sent = Vec::with_capacity(success.inline.len());
        for bytes in &success.inline {
            if bytes.len() > MAX_INLINE_BYTES {
                return Err(Error::InvalidArgument(format!(
                    "an inline output of {} bytes; at most {MAX_INLINE_BYTES} (upload it instead)",
                    bytes.len()
                )));
            }
            let hash = BlobHash::of(bytes);
            let named_here = named
                .iter()
                .any(|(_, blob)| blob.hash == hash.0 && blob.size == bytes.len() as u64);
            if !named_here {
                return Err(Error::InvalidArgument(format!(
                    "inline output {hash} ({} bytes) is none of the outputs the report names",
                    bytes.len()
                )));
            }
            sent.push((hash, bytes.as_slice()));
        }
        Ok(sent)
    }

    /// Marks every overdue lease timed out and lets their units reissue.
    pub async fn expire_overdue(&self) -> Result<u64> {
        let now = cobble_core::now_ms();
        // A read first: most calls find nothing and need no write lock.
        let any: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM results WHERE state = 'in_progress' AND deadline_ms < $1 LIMIT 1",
        )
        .bind(now)
        .fetch_optional(self.db.pool())
        .await?;
        if any.is_none() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().await?;
        let expired = self
            .expire_overdue_in(&mut tx, cobble_core::now_ms())
            .await?;
        tx.commit().await?;
        Ok(expired)
    }

    async fn expire_overdue_in(&self, tx: &mut Tx, now: i64) -> Result<u64> {
        // Several coordinators (and every request for work) sweep: each
        // takes the overdue leases nobody else is timing out right now.
        let overdue = sqlx::query(&format!(
            "SELECT id, unit_id FROM results WHERE state = 'in_progress' AND deadline_ms < $1
             ORDER BY id LIMIT 1000{}",
            self.db.skip_locked("results")
        ))
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
        let mut ledger = Ledger::default();
        for row in &overdue {
            self.time_out_in(
                tx,
                row.try_get("id")?,
                row.try_get("unit_id")?,
                now,
                &mut ledger,
            )
            .await?;
        }
        self.settle_in(tx, ledger, now).await?;
        if !overdue.is_empty() {
            tracing::info!(count = overdue.len(), "leases timed out");
        }
        Ok(overdue.len() as u64)
    }

    /// A missed deadline: the result is over, its host's quota and trust
    /// fall as for an error, and its unit may need another replica.
    async fn time_out_in(
        &self,
        tx: &mut Tx,
        result_id: i64,
        unit_id: i64,
        now: i64,
        ledger: &mut Ledger,
    ) -> Result<()> {
        let timed_out = sqlx::query(
            "UPDATE results SET state = 'timed_out' WHERE id = $1 AND state = 'in_progress'",
        )
        .bind(result_id)
        .execute(&mut **tx)
        .await?;
        let holder = sqlx::query(
            "SELECT r.host_id, j.module_hash FROM results r
             JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id WHERE r.id = $1",
        )
        .bind(result_id)
        .fetch_optional(&mut **tx)
        .await?;
        if timed_out.rows_affected() == 1
            && let Some(row) = holder
            && let Some(host_id) = row.try_get::<Option<i64>, _>("host_id")?
        {
            let module: Vec<u8> = row.try_get("module_hash")?;
            ledger.outcome(host_id, &module, integrity::Outcome::Failed);
        }
        self.transition_in(tx, unit_id, now, ledger, &Stdouts::new())
            .await
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
            .execute(self.db.writes())
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
