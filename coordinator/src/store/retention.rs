//! A project that runs for a year (BOINC's db_purge and file_deleter): a
//! finished job's outputs and result rows are kept for `--keep-outputs-hours`
//! after its researcher collected them (listed its results), then purged:
//! its results and units are deleted, the job row stays (`purged_ms`, what
//! it was and how it ended), and the blobs nothing refers to any more are
//! deleted by the next garbage collection (`garbage.rs`), inline outputs
//! included. A job nobody collected is kept: its results were never read.

use super::Store;
use crate::error::Result;

/// Units purged per transaction: a big job goes in short steps, each
/// holding its locks briefly.
const UNITS_PER_STEP: i64 = 2_000;

impl Store {
    /// Notes that the researcher collected a finished job's results; the
    /// first collection starts the retention clock.
    pub(super) async fn note_collected(&self, job_id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE jobs SET collected_ms = $1
             WHERE id = $2 AND state <> 'running' AND collected_ms IS NULL",
        )
        .bind(cobble_core::now_ms())
        .bind(job_id)
        .execute(self.db.writes())
        .await?;
        Ok(())
    }

    /// Purges the jobs collected before `collected_before` (Unix ms);
    /// returns how many jobs and result rows went.
    pub async fn purge_collected_jobs(&self, collected_before: i64) -> Result<(u64, u64)> {
        let jobs: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE purged_ms IS NULL AND collected_ms IS NOT NULL
               AND collected_ms < $1 AND state <> 'running' ORDER BY id",
        )
        .bind(collected_before)
        .fetch_all(self.db.pool())
        .await?;
        let mut results = 0;
        for job_id in &jobs {
            results += self.purge_job(*job_id).await?;
        }
        if !jobs.is_empty() {
            tracing::info!(jobs = jobs.len(), results, "finished jobs purged");
        }
        Ok((jobs.len() as u64, results))
    }

    async fn purge_job(&self, job_id: i64) -> Result<u64> {
        let mut results = 0;
        loop {
            let mut tx = self.db.begin_write().await?;
            let units: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT id FROM units WHERE job_id = $1 ORDER BY id LIMIT {UNITS_PER_STEP}"
            ))
            .bind(job_id)
            .fetch_all(&mut *tx)
            .await?;
            if units.is_empty() {
                sqlx::query("UPDATE jobs SET purged_ms = $1 WHERE id = $2")
                    .bind(cobble_core::now_ms())
                    .bind(job_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(results);
            }
            let (first, last) = (units[0], units[units.len() - 1]);
            let deleted = sqlx::query(
                "DELETE FROM results WHERE unit_id IN (
                     SELECT id FROM units WHERE job_id = $1 AND id >= $2 AND id <= $3)",
            )
            .bind(job_id)
            .bind(first)
            .bind(last)
            .execute(&mut *tx)
            .await?;
            results += deleted.rows_affected();
            sqlx::query("DELETE FROM units WHERE job_id = $1 AND id >= $2 AND id <= $3")
                .bind(job_id)
                .bind(first)
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
}
