//! Jobs: submission (splitting into units and their first replicas),
//! status, results and cancellation.

use super::Store;
use super::scheduler::{NETWORK_WAIT_SHOWN_MS, Placement, random_key};
use crate::error::{Error, Result};
use cobble_core::{BlobHash, spec};
use cobble_proto::v1 as pb;
use prost::Message;
use sqlx::Row;

impl Store {
    /// Checks a spec, splits it into units and creates `target_results`
    /// unsent results for each, all in one transaction.
    pub async fn submit_job(
        &self,
        spec: &pb::JobSpec,
        researcher: &super::Researcher,
    ) -> Result<(i64, u32)> {
        let spec = &self.with_runtime(spec)?;
        spec::check_spec(spec)?;
        if let Some(code_key) = self.code_key() {
            let mut modules = vec![("module", spec.module.as_ref(), &spec.module_signature)];
            if let Some(reduce) = spec.reduce.as_ref().filter(|r| r.module.is_some()) {
                modules.push((
                    "reduce.module",
                    reduce.module.as_ref(),
                    &reduce.module_signature,
                ));
            }
            for (field, module, signature) in modules {
                let module = module
                    .map(|m| BlobHash::from_slice(&m.hash))
                    .transpose()?
                    .ok_or_else(|| Error::InvalidArgument("the job names no module".into()))?;
                cobble_core::code_signing::verify(&module, signature, code_key).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "{field}: this project runs only code signed by its code-signing key: {e}. Sign the module with `cobble sign-module` on the machine that holds the key, and put the .sig file beside it"
                    ))
                })?;
            }
        }
        self.require_blobs(spec).await?;
        self.prepare_validator(spec).await?;
        let spec = &self.with_chunk_roots(spec).await?;
        let units = spec::split(spec);
        self.check_units_quota(researcher, units.len() as i64)
            .await?;
        let replication = spec.replication.unwrap_or(spec::DEFAULT_REPLICATION);
        let limits = spec.limits.unwrap_or_default();
        let now = cobble_core::now_ms();

        let mut tx = self.db.begin_write().await?;
        let job_id: i64 = sqlx::query_scalar(
            "INSERT INTO jobs (name, state, spec, min_quorum, target_results, max_total_results, deadline_s, units_total, created_ms,
                               module_hash, adaptive, researcher_id)
             VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(&spec.name)
        .bind(spec.encode_to_vec())
        .bind(i64::from(replication.min_quorum))
        .bind(i64::from(replication.target_results))
        .bind(i64::from(replication.max_total_results))
        .bind(i64::from(limits.deadline_s))
        // The reduce unit counts from the start: a job is not 100% done
        // before it is.
        .bind(units.len() as i64 + i64::from(spec.reduce.is_some()))
        .bind(now)
        .bind(spec.module.as_ref().map(|m| m.hash.clone()).unwrap_or_default())
        .bind(i64::from(replication.adaptive.unwrap_or(true)))
        .bind(researcher.id)
        .fetch_one(&mut *tx)
        .await?;
        super::researchers::audit(
            &mut tx,
            &researcher.name,
            "submit",
            Some(job_id),
            &format!("{:?}: {} units", spec.name, units.len()),
        )
        .await?;
        // Many rows per statement: a million-unit job is thousands of
        // statements, not millions, inside its one transaction.
        for chunk in units.chunks(UNITS_PER_INSERT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "({job_id}, ${}, ${}, 'pending', {now})",
                        2 * i + 1,
                        2 * i + 2
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO units (job_id, idx, payload, state, created_ms) VALUES {} RETURNING id",
                rows.join(", ")
            );
            let mut insert = sqlx::query_scalar::<_, i64>(&sql);
            for unit in chunk {
                let payload = pb::Manifest {
                    args: unit.args.clone(),
                    inputs: unit.inputs.clone(),
                    ..Default::default()
                };
                insert = insert
                    .bind(i64::from(unit.index))
                    .bind(payload.encode_to_vec());
            }
            let unit_ids = insert.fetch_all(&mut *tx).await?;
            // One replica first: how many more it gets is decided when it
            // goes out, by who takes it (adaptive replication).
            insert_unsent_many(&mut tx, &unit_ids, now, READY_NOW).await?;
        }
        // Known-answer units look like any other (numbered after the
        // job's own, with its shared inputs); only this row knows the answer.
        for (offset, known) in spec.known_answers.iter().enumerate() {
            let payload = pb::Manifest {
                args: known.args.clone(),
                inputs: spec.inputs.clone(),
                ..Default::default()
            };
            let unit_id: i64 = sqlx::query_scalar(
                "INSERT INTO units (job_id, idx, payload, state, created_ms, known_digest, known_fuel)
                 VALUES ($1, $2, $3, 'pending', $4, $5, $6) RETURNING id",
            )
            .bind(job_id)
            .bind((units.len() + offset) as i64)
            .bind(payload.encode_to_vec())
            .bind(now)
            .bind(&known.digest)
            .bind(i64::try_from(known.fuel).unwrap_or(i64::MAX))
            .fetch_one(&mut *tx)
            .await?;
            for _ in 0..spec.known_answer_copies {
                insert_unsent(&mut tx, unit_id, now, READY_NOW).await?;
            }
        }
        tx.commit().await?;
        // The researcher is told the job exists: it must survive a power loss.
        self.db.make_durable().await?;
        self.notify_work_added();
        tracing::info!(job_id, name = %spec.name, units = units.len(), "job submitted");
        Ok((job_id, units.len() as u32))
    }

    /// The spec with every blob's chunk root filled in, so that manifests
    /// commit to the chunk lists peers' chunks are checked against.
    async fn with_chunk_roots(&self, spec: &pb::JobSpec) -> Result<pb::JobSpec> {
        let mut spec = spec.clone();
        for (_, blob) in spec::blobs_mut(&mut spec) {
            let hash = BlobHash::from_slice(&blob.hash)?;
            blob.chunk_root = self.blobs.chunk_list(&hash).await?.root().to_vec();
        }
        Ok(spec)
    }

    /// A job on a runtime gets the runtime's module, which this coordinator
    /// serves, and so does a reduce step on one; their own code is an
    /// input, which signed-code projects cannot check, so they take no such
    /// job.
    fn with_runtime(&self, spec: &pb::JobSpec) -> Result<pb::JobSpec> {
        let mut spec = spec.clone();
        if !spec.runtime.is_empty() {
            if spec.module.is_some() {
                return Err(Error::InvalidArgument(
                    "a job on a runtime names no module of its own".into(),
                ));
            }
            spec.module = Some(self.runtime_module(&spec.runtime)?);
        }
        if let Some(reduce) = spec.reduce.as_mut().filter(|r| !r.runtime.is_empty()) {
            if reduce.module.is_some() {
                return Err(Error::InvalidArgument(
                    "a reduce step on a runtime names no module of its own".into(),
                ));
            }
            reduce.module = Some(self.runtime_module(&reduce.runtime)?);
        }
        Ok(spec)
    }

    fn runtime_module(&self, runtime: &str) -> Result<pb::BlobRef> {
        if self.code_key().is_some() {
            return Err(Error::InvalidArgument(format!(
                "this project runs only code signed by its code-signing key; a {runtime} script is not signed code"
            )));
        }
        self.runtimes().get(runtime).cloned().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "this coordinator serves no {runtime:?} runtime; its operator starts it with --{runtime}-runtime FILE"
            ))
        })
    }

    /// Refuses a spec naming blobs the coordinator does not hold.
    async fn require_blobs(&self, spec: &pb::JobSpec) -> Result<()> {
        for (name, blob) in spec::blobs_mut(&mut spec.clone()) {
            let hash = BlobHash::from_slice(&blob.hash)?;
            match self.blobs.size_of(&hash).await? {
                Some(size) if size == blob.size => {}
                Some(size) => {
                    return Err(Error::InvalidArgument(format!(
                        "{name}: blob {hash} holds {size} bytes, the spec says {}",
                        blob.size
                    )));
                }
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "{name}: blob {hash} was not uploaded; upload it before submitting"
                    )));
                }
            }
        }
        Ok(())
    }

    pub async fn job_status(&self, job_id: i64) -> Result<pb::JobStatus> {
        let job = sqlx::query(
            "SELECT name, CASE WHEN purged_ms IS NULL THEN state ELSE 'purged' END AS state,
                    units_total, created_ms, finished_ms FROM jobs WHERE id = $1",
        )
        .bind(job_id)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| Error::NotFound(format!("no job {job_id}")))?;
        let units = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE state = 'pending') AS pending,
                    COUNT(*) FILTER (WHERE state = 'done') AS done,
                    COUNT(*) FILTER (WHERE state = 'errored') AS errored,
                    COUNT(*) FILTER (WHERE state = 'pending' AND network_wait_ms > $2) AS network_wait,
                    COUNT(*) FILTER (WHERE state = 'done' AND replicated = 0) AS unreplicated
             FROM units WHERE job_id = $1 AND known_digest IS NULL",
        )
        .bind(job_id)
        .bind(cobble_core::now_ms() - NETWORK_WAIT_SHOWN_MS)
        .fetch_one(self.db.pool())
        .await?;
        let results = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE r.state = 'in_progress') AS in_progress,
                    COUNT(*) FILTER (WHERE r.validate_state = 'valid') AS valid,
                    COUNT(*) FILTER (WHERE r.validate_state = 'invalid') AS invalid,
                    COUNT(*) FILTER (WHERE r.state = 'timed_out') AS timed_out,
                    COUNT(*) FILTER (WHERE r.outcome = 'client_error') AS client_error,
                    COALESCE(SUM(r.granted_credit), 0.0) AS credit,
                    COALESCE(SUM(r.revoked_credit), 0.0) AS revoked,
                    COALESCE(SUM(CASE WHEN r.credit = 'deferred'
                                 THEN CAST(r.fuel_used AS DOUBLE PRECISION) ELSE 0.0 END), 0.0) AS deferred_fuel,
                    COUNT(*) FILTER (WHERE u.known_digest IS NOT NULL AND r.validate_state = 'valid') AS known_passed,
                    COUNT(*) FILTER (WHERE u.known_digest IS NOT NULL AND r.validate_state = 'invalid') AS known_failed
             FROM results r JOIN units u ON u.id = r.unit_id WHERE u.job_id = $1",
        )
        .bind(job_id)
        .fetch_one(self.db.pool())
        .await?;
        // A pending unit counts as far as its most advanced running replica.
        let running: f64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(p), 0.0) FROM (
                 SELECT MAX(r.progress) AS p FROM results r JOIN units u ON u.id = r.unit_id
                 WHERE u.job_id = $1 AND u.state = 'pending' AND r.state = 'in_progress'
                 GROUP BY r.unit_id) AS running",
        )
        .bind(job_id)
        .fetch_one(self.db.pool())
        .await?;
        let last_error = sqlx::query(
            "SELECT idx, error FROM units WHERE job_id = $1 AND state = 'errored'
             ORDER BY finished_ms DESC, id DESC LIMIT 1",
        )
        .bind(job_id)
        .fetch_optional(self.db.pool())
        .await?;
        let last_unit_error = match last_error {
            Some(row) => format!(
                "unit {}: {}",
                row.try_get::<i64, _>("idx")?,
                row.try_get::<Option<String>, _>("error")?
                    .unwrap_or_default()
            ),
            None => String::new(),
        };
        let count = |row: &sqlx::any::AnyRow, column: &str| -> Result<u32> {
            Ok(row.try_get::<i64, _>(column)? as u32)
        };
        Ok(pb::JobStatus {
            job_id,
            name: job.try_get("name")?,
            state: job.try_get("state")?,
            units_total: count(&job, "units_total")?,
            units_pending: count(&units, "pending")?,
            units_done: count(&units, "done")?,
            units_errored: count(&units, "errored")?,
            results_in_progress: count(&results, "in_progress")?,
            results_valid: count(&results, "valid")?,
            results_invalid: count(&results, "invalid")?,
            results_timed_out: count(&results, "timed_out")?,
            results_client_error: count(&results, "client_error")?,
            credit_granted: results.try_get("credit")?,
            created_ms: job.try_get("created_ms")?,
            finished_ms: job.try_get::<Option<i64>, _>("finished_ms")?.unwrap_or(0),
            progress: progress_fraction(&units, &job, running)?,
            units_waiting_network: count(&units, "network_wait")?,
            credit_revoked: results.try_get("revoked")?,
            units_unreplicated: count(&units, "unreplicated")?,
            credit_pending: crate::credit::for_fuel_f64(results.try_get("deferred_fuel")?),
            known_answer_passed: count(&results, "known_passed")?,
            known_answer_failed: count(&results, "known_failed")?,
            last_unit_error,
        })
    }

    /// Every unit of a job with its canonical output, if it has one.
    pub async fn job_results(&self, job_id: i64) -> Result<pb::JobResults> {
        let status = self.job_status(job_id).await?;
        // Listing a finished job's results is collecting them: its
        // retention clock starts (`retention.rs`).
        self.note_collected(job_id).await?;
        let rows = sqlx::query(
            "SELECT u.idx, u.state, u.payload, u.error, u.replicated, u.is_reduce, r.output
             FROM units u LEFT JOIN results r ON r.id = u.canonical_result_id
             WHERE u.job_id = $1 AND u.known_digest IS NULL ORDER BY u.idx",
        )
        .bind(job_id)
        .fetch_all(self.db.pool())
        .await?;
        let units = rows
            .iter()
            .map(unit_result_of)
            .collect::<Result<Vec<_>>>()?;
        Ok(pb::JobResults {
            status: Some(status),
            units,
        })
    }

    /// One unit's result, as in [`Store::job_results`] (its canonical
    /// outputs once done); None if the job has no such unit.
    pub async fn unit_result(&self, job_id: i64, index: i64) -> Result<Option<pb::UnitResult>> {
        let row = sqlx::query(
            "SELECT u.idx, u.state, u.payload, u.error, u.replicated, u.is_reduce, r.output
             FROM units u LEFT JOIN results r ON r.id = u.canonical_result_id
             WHERE u.job_id = $1 AND u.idx = $2 AND u.known_digest IS NULL",
        )
        .bind(job_id)
        .bind(index)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(unit_result_of).transpose()
    }

    /// Stops issuing a job's work. Running replicas are told to abort on
    /// their next heartbeat; nothing already valid is undone.
    pub async fn cancel_job(&self, job_id: i64) -> Result<pb::JobStatus> {
        let mut tx = self.db.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_ms = $2 WHERE id = $1 AND state = 'running'",
        )
        .bind(job_id)
        .bind(cobble_core::now_ms())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            sqlx::query(
                "UPDATE results SET state = 'aborted'
                 WHERE state = 'unsent' AND unit_id IN (SELECT id FROM units WHERE job_id = $1)",
            )
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.job_status(job_id).await
    }
}

fn progress_fraction(
    units: &sqlx::any::AnyRow,
    job: &sqlx::any::AnyRow,
    running: f64,
) -> Result<f64> {
    let total: i64 = job.try_get("units_total")?;
    let finished = units.try_get::<i64, _>("done")? + units.try_get::<i64, _>("errored")?;
    Ok(if total == 0 {
        1.0
    } else {
        ((finished as f64 + running) / total as f64).clamp(0.0, 1.0)
    })
}

/// A unit's first replica: anyone may take it at once.
pub(super) const READY_NOW: Placement = Placement {
    ready_ms: 0,
    reserved_until_ms: 0,
    reserved_min_valid: 0,
    further: false,
};

/// Units per INSERT at submit: SQLite takes at most 32,766 parameters.
const UNITS_PER_INSERT: usize = 2_000;

/// One unsent result for each unit, in one statement.
pub(super) async fn insert_unsent_many(
    tx: &mut crate::db::Tx,
    unit_ids: &[i64],
    now: i64,
    placement: Placement,
) -> Result<()> {
    if unit_ids.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = unit_ids
        .iter()
        .map(|unit_id| {
            format!(
                "({unit_id}, 'unsent', {now}, {}, {}, {}, {}, {})",
                random_key(),
                placement.ready_ms,
                placement.reserved_until_ms,
                placement.reserved_min_valid,
                i64::from(placement.further)
            )
        })
        .collect();
    sqlx::query(&format!(
        "INSERT INTO results (unit_id, state, created_ms, rand_key, ready_ms, reserved_until_ms,
                              reserved_min_valid, further)
         VALUES {}",
        rows.join(", ")
    ))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn insert_unsent(
    tx: &mut crate::db::Tx,
    unit_id: i64,
    now: i64,
    placement: Placement,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO results (unit_id, state, created_ms, rand_key, ready_ms, reserved_until_ms,
                              reserved_min_valid, further)
         VALUES ($1, 'unsent', $2, $3, $4, $5, $6, $7)",
    )
    .bind(unit_id)
    .bind(now)
    .bind(random_key())
    .bind(placement.ready_ms)
    .bind(placement.reserved_until_ms)
    .bind(i64::from(placement.reserved_min_valid))
    .bind(i64::from(placement.further))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A row of `idx, state, payload, error, replicated, is_reduce, output`
/// as a result.
fn unit_result_of(row: &sqlx::any::AnyRow) -> Result<pb::UnitResult> {
    let payload: Vec<u8> = row.try_get("payload")?;
    let payload = pb::Manifest::decode(payload.as_slice())
        .map_err(|e| Error::Corrupt(format!("unit payload: {e}")))?;
    let output: Option<Vec<u8>> = row.try_get("output")?;
    let output = match output {
        Some(bytes) => Some(
            pb::Success::decode(bytes.as_slice())
                .map_err(|e| Error::Corrupt(format!("result output: {e}")))?,
        ),
        None => None,
    };
    let (stdout, files) = output.map_or((None, Vec::new()), |o| (o.stdout, o.files));
    Ok(pb::UnitResult {
        index: row.try_get::<i64, _>("idx")? as u32,
        state: row.try_get("state")?,
        stdout,
        files,
        error: row
            .try_get::<Option<String>, _>("error")?
            .unwrap_or_default(),
        args: payload.args,
        replicated: row.try_get::<Option<i64>, _>("replicated")? == Some(1),
        reduce: row.try_get::<i64, _>("is_reduce")? == 1,
    })
}
