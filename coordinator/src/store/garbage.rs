//! Collecting blobs nothing refers to: uploads never submitted, outputs of
//! reports that were refused, and what purged jobs left (`retention.rs`).
//! A blob, file or inline row, is kept while any unpurged job's spec
//! (`cobble_core::spec::blobs_mut`) or any result's output names
//! it, and a runtime's module always.

use super::Store;
use crate::error::{Error, Result};
use cobble_core::BlobHash;
use cobble_proto::v1 as pb;
use prost::Message;
use std::collections::HashSet;

impl Store {
    /// Deletes blobs last written before `before` (Unix ms) that no job or
    /// result refers to; returns how many, and the bytes freed.
    pub async fn collect_unreferenced_blobs(&self, before: i64) -> Result<(u64, u64)> {
        let candidates = self.blobs.older_than(before).await?;
        let small: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT hash FROM small_blobs WHERE created_ms < $1")
                .bind(before)
                .fetch_all(self.db.pool())
                .await?;
        if candidates.is_empty() && small.is_empty() {
            return Ok((0, 0));
        }
        let referenced = self.referenced_blobs().await?;
        let (mut count, mut bytes) = (0, 0);
        for raw in small {
            let Ok(hash) = BlobHash::from_slice(&raw) else {
                continue;
            };
            if !referenced.contains(&hash) {
                let deleted = sqlx::query_scalar::<_, i64>(
                    "DELETE FROM small_blobs WHERE hash = $1 RETURNING LENGTH(bytes)",
                )
                .bind(raw)
                .fetch_optional(self.db.writes())
                .await?;
                bytes += deleted.map_or(0, |size| size.max(0) as u64);
                self.forget_researcher_blob(&hash).await?;
                count += 1;
            }
        }
        for hash in candidates {
            if !referenced.contains(&hash) {
                bytes += self.blobs.remove(&hash).await?;
                self.forget_researcher_blob(&hash).await?;
                count += 1;
            }
        }
        if count > 0 {
            tracing::info!(count, bytes, "unreferenced blobs deleted");
        }
        Ok((count, bytes))
    }

    async fn referenced_blobs(&self) -> Result<HashSet<BlobHash>> {
        let mut referenced = HashSet::new();
        let mut add = |blob: &pb::BlobRef| {
            if let Ok(hash) = BlobHash::from_slice(&blob.hash) {
                referenced.insert(hash);
            }
        };
        // The runtimes this coordinator serves, used by a job or not.
        self.runtimes().values().for_each(&mut add);
        // A purged job's module and inputs are no longer kept for it.
        let specs: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT spec FROM jobs WHERE purged_ms IS NULL")
                .fetch_all(self.db.pool())
                .await?;
        for spec in specs {
            let mut spec = pb::JobSpec::decode(spec.as_slice())
                .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
            for (_, blob) in cobble_core::spec::blobs_mut(&mut spec) {
                add(blob);
            }
        }
        let outputs: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT output FROM results WHERE output IS NOT NULL")
                .fetch_all(self.db.pool())
                .await?;
        for output in outputs {
            let output = pb::Success::decode(output.as_slice())
                .map_err(|e| Error::Corrupt(format!("result output: {e}")))?;
            output.stdout.iter().for_each(&mut add);
            output
                .files
                .iter()
                .filter_map(|f| f.blob.as_ref())
                .for_each(&mut add);
        }
        Ok(referenced)
    }
}
