//! Running researchers' validator modules on the units that wait for them
//! (BOINC's validator daemon). A validator may take seconds, so it never
//! runs inside a transaction: the outputs are read, the module runs, and
//! one short transaction records its verdicts and decides the unit again.
//! Units of numeric validators come here too: their stdouts are read
//! before that transaction, never inside one.

use super::Store;
use super::transition::{Ledger, MAX_NUMERIC_STDOUT, Stdouts};
use crate::error::{Error, Result};
use crate::validator::{self, Verdict};
use cobble_core::BlobHash;
use cobble_core::agreement::Agreement;
use cobble_proto::v1 as pb;
use cobble_sandbox::PreparedModule;
use prost::Message;
use sqlx::Row;
use std::path::Path;

/// Units validated per pass; the rest wait for the next.
const UNITS_PER_PASS: i64 = 32;

/// One success of a unit as the validator sees it.
struct Output {
    result_id: i64,
    group: Option<i64>,
    success: pb::Success,
}

impl Store {
    /// Compiles a spec's validator module, so a module that is not a WASI
    /// command is refused at submit rather than failing every unit.
    pub(super) async fn prepare_validator(&self, spec: &pb::JobSpec) -> Result<()> {
        if let Some(module) = validator_module(spec) {
            self.compiled_validator(module).await?;
        }
        Ok(())
    }

    /// The job's validator module, compiled (once per hash: the sandbox
    /// caches it) from the blob store.
    async fn compiled_validator(&self, module: &pb::BlobRef) -> Result<PreparedModule> {
        let hash = BlobHash::from_slice(&module.hash)?;
        let local = self.blobs.local(&hash).await?;
        self.validators.prepare(&hash, local.path()).await
    }

    /// Waits until a unit may need its job's validator (or a second has
    /// passed: a wake-up sent before its transaction committed is not lost).
    pub async fn validation_wanted(&self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.validation_wanted.notified(),
        )
        .await;
    }

    /// Runs the validators of units waiting for them; returns how many units
    /// it settled (a unit whose outputs cannot be read now is retried later).
    pub async fn run_validators(&self) -> Result<usize> {
        let units: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM units WHERE needs_validator = 1 ORDER BY id LIMIT $1",
        )
        .bind(UNITS_PER_PASS)
        .fetch_all(self.db.pool())
        .await?;
        let mut settled = 0;
        for unit_id in &units {
            match self.validate_unit(*unit_id).await {
                Ok(()) => settled += 1,
                Err(error) => {
                    tracing::warn!(unit_id, %error, "validating unit failed; trying again later")
                }
            }
        }
        Ok(settled)
    }

    async fn validate_unit(&self, unit_id: i64) -> Result<()> {
        let unit = sqlx::query(
            "SELECT u.state, j.spec FROM units u JOIN jobs j ON j.id = u.job_id WHERE u.id = $1",
        )
        .bind(unit_id)
        .fetch_one(self.db.pool())
        .await?;
        let spec: Vec<u8> = unit.try_get("spec")?;
        let spec = pb::JobSpec::decode(spec.as_slice())
            .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
        let pending = unit.try_get::<String, _>("state")? == "pending";
        if pending
            && matches!(
                Agreement::of(spec.validator.as_ref()),
                Agreement::Numeric { .. }
            )
        {
            let stdouts = self.numeric_stdouts(unit_id).await?;
            return self.record_verdicts(unit_id, &[], None, &stdouts).await;
        }
        let Some(module_ref) = validator_module(&spec).filter(|_| pending) else {
            return self
                .record_verdicts(unit_id, &[], None, &Stdouts::new())
                .await;
        };
        let outputs = self.outputs_of(unit_id).await?;
        if outputs.iter().all(|o| o.group.is_some()) {
            return self
                .record_verdicts(unit_id, &[], None, &Stdouts::new())
                .await;
        }
        let module = match self.compiled_validator(module_ref).await {
            Ok(module) => module,
            Err(Error::Sandbox(e)) => {
                let reason = format!("the job's validator module is unusable: {e}");
                return self
                    .record_verdicts(unit_id, &[], Some(reason), &Stdouts::new())
                    .await;
            }
            Err(other) => return Err(other),
        };
        let (assigned, failure) = self.judge(&module, &outputs).await?;
        self.record_verdicts(unit_id, &assigned, failure, &Stdouts::new())
            .await
    }

    /// The stdouts a numeric validator compares, read outside any
    /// transaction (a blob that cannot be read now fails the pass, and the
    /// unit is tried again later, losing nothing).
    async fn numeric_stdouts(&self, unit_id: i64) -> Result<Stdouts> {
        let mut stdouts = Stdouts::new();
        for output in self.outputs_of(unit_id).await? {
            let Some(stdout) = output.success.stdout else {
                continue;
            };
            let hash = BlobHash::from_slice(&stdout.hash)?;
            if stdout.size <= MAX_NUMERIC_STDOUT && !stdouts.contains_key(&hash) {
                stdouts.insert(hash, self.read_blob(&hash).await?);
            }
        }
        Ok(stdouts)
    }

    /// Runs the validator over every success; if it fails, over each new
    /// output alone (one that alone makes it fail is rejected: a host
    /// cannot stall a unit by crafting an output its validator chokes on),
    /// then over the rest once more. A validator that fails on every output
    /// and never judged one, or fails once the culprits are out, is broken:
    /// the unit errors with its reason rather than burn replicas.
    async fn judge(
        &self,
        module: &PreparedModule,
        outputs: &[Output],
    ) -> Result<(Vec<(i64, i64)>, Option<String>)> {
        let all: Vec<&Output> = outputs.iter().collect();
        let failure = match self.verdicts(module, &all).await? {
            Ok(verdicts) => return Ok((assign(&all, &verdicts), None)),
            Err(failure) => failure,
        };
        tracing::info!(%failure, "validator failed over several outputs; trying each new one alone");
        let mut rejected = Vec::new();
        let mut works = outputs.iter().any(|o| o.group.is_some_and(|g| g >= 0));
        for output in outputs.iter().filter(|o| o.group.is_none()) {
            match self.verdicts(module, &[output]).await? {
                Ok(_) => works = true,
                Err(_) => rejected.push((output.result_id, -1)),
            }
        }
        if !works {
            return Ok((
                Vec::new(),
                Some(format!("the job's validator failed: {failure}")),
            ));
        }
        let rest: Vec<&Output> = outputs
            .iter()
            .filter(|o| !rejected.iter().any(|(id, _)| *id == o.result_id))
            .collect();
        if rest.iter().all(|o| o.group.is_some()) {
            return Ok((rejected, None));
        }
        Ok(match self.verdicts(module, &rest).await? {
            Ok(verdicts) => {
                rejected.extend(assign(&rest, &verdicts));
                (rejected, None)
            }
            Err(failure) => (
                rejected,
                Some(format!("the job's validator failed: {failure}")),
            ),
        })
    }

    /// Lays the outputs out as the validator protocol says and runs it.
    async fn verdicts(
        &self,
        module: &PreparedModule,
        outputs: &[&Output],
    ) -> Result<std::result::Result<Vec<Verdict>, String>> {
        // A directory of links to blobs: making and removing it is a few
        // system calls, not worth a blocking thread.
        let scratch = tempfile::Builder::new()
            .prefix("validate-")
            .tempdir_in(self.blobs.scratch_dir())
            .map_err(Error::io("creating a validator's scratch directory"))?;
        let input_dir = scratch.path().join("input");
        for (position, output) in outputs.iter().enumerate() {
            let dir = input_dir.join(position.to_string());
            if let Some(stdout) = &output.success.stdout {
                self.place(stdout, &dir.join("stdout")).await?;
            }
            for file in &output.success.files {
                if let Some(blob) = &file.blob {
                    // Names were checked to be plain relative names at report.
                    self.place(blob, &dir.join("output").join(&file.name))
                        .await?;
                }
            }
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        self.validators
            .run(module, &input_dir, outputs.len(), &self.policy)
            .await
    }

    /// Links (or, across file systems, copies) a stored blob to `path`:
    /// the validator sees it read-only, so the blob store is never at risk.
    async fn place(&self, blob: &pb::BlobRef, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        let hash = BlobHash::from_slice(&blob.hash)?;
        if let Some(bytes) = self.small_blob(&hash).await? {
            return tokio::fs::write(path, bytes)
                .await
                .map_err(Error::io(format!("writing {}", path.display())));
        }
        self.blobs.copy_to(&hash, path).await
    }

    async fn outputs_of(&self, unit_id: i64) -> Result<Vec<Output>> {
        let rows = sqlx::query(
            "SELECT id, output, agreement_group FROM results
             WHERE unit_id = $1 AND state = 'reported' AND outcome = 'success'
               AND validate_state <> 'invalid'
             ORDER BY id",
        )
        .bind(unit_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut outputs = Vec::with_capacity(rows.len());
        for row in rows {
            let output: Option<Vec<u8>> = row.try_get("output")?;
            let success = pb::Success::decode(output.unwrap_or_default().as_slice())
                .map_err(|e| Error::Corrupt(format!("result output: {e}")))?;
            outputs.push(Output {
                result_id: row.try_get("id")?,
                group: row.try_get("agreement_group")?,
                success,
            });
        }
        Ok(outputs)
    }

    /// Stores new groups (only where none is stored: a concurrent run of
    /// the same unit cannot regroup what another recorded), then decides
    /// the unit again, or errors it when its validator cannot be run.
    async fn record_verdicts(
        &self,
        unit_id: i64,
        assigned: &[(i64, i64)],
        failure: Option<String>,
        stdouts: &Stdouts,
    ) -> Result<()> {
        let now = cobble_core::now_ms();
        let mut tx = self.db.begin_write().await?;
        let unit = sqlx::query(&format!(
            "SELECT state, job_id FROM units WHERE id = $1{}",
            self.db.for_update_of("units")
        ))
        .bind(unit_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE units SET needs_validator = 0 WHERE id = $1")
            .bind(unit_id)
            .execute(&mut *tx)
            .await?;
        for (result_id, group) in assigned {
            sqlx::query(
                "UPDATE results SET agreement_group = $1
                 WHERE id = $2 AND unit_id = $3 AND agreement_group IS NULL",
            )
            .bind(group)
            .bind(result_id)
            .bind(unit_id)
            .execute(&mut *tx)
            .await?;
        }
        let mut ledger = Ledger::default();
        if unit.try_get::<String, _>("state")? == "pending" {
            match failure {
                Some(reason) => {
                    let job_id: i64 = unit.try_get("job_id")?;
                    self.error_unit_in(&mut tx, unit_id, job_id, &reason, now)
                        .await?;
                }
                None => {
                    self.transition_in(&mut tx, unit_id, now, &mut ledger, stdouts)
                        .await?
                }
            }
        }
        self.settle_in(&mut tx, ledger, now).await?;
        tx.commit().await?;
        Ok(())
    }
}

fn validator_module(spec: &pb::JobSpec) -> Option<&pb::BlobRef> {
    spec.validator.as_ref().and_then(|v| v.module.as_ref())
}

fn assign(outputs: &[&Output], verdicts: &[Verdict]) -> Vec<(i64, i64)> {
    let members: Vec<(i64, Option<i64>)> = outputs.iter().map(|o| (o.result_id, o.group)).collect();
    validator::assign_groups(&members, verdicts)
}
