//! Small outputs sent inline with their reports: rows of `small_blobs`,
//! read wherever a stored blob is, when the blob store has no file of that
//! hash. Why rows: a result's few bytes cost a row in a transaction that
//! commits anyway, where a file costs a create, an fsync and a rename.

use super::Store;
use crate::error::{Error, Result};
use cobble_core::BlobHash;

impl Store {
    /// The size of a stored blob, file or row; None if neither exists.
    pub async fn blob_size(&self, hash: &BlobHash) -> Result<Option<u64>> {
        if let Some(size) = self.blobs.size_of(hash).await? {
            return Ok(Some(size));
        }
        let size: Option<i64> =
            sqlx::query_scalar("SELECT LENGTH(bytes) FROM small_blobs WHERE hash = $1")
                .bind(hash.0.to_vec())
                .fetch_optional(self.db.pool())
                .await?;
        Ok(size.map(|s| s.max(0) as u64))
    }

    /// A small blob's bytes, if it is one.
    pub async fn small_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT bytes FROM small_blobs WHERE hash = $1")
                .bind(hash.0.to_vec())
                .fetch_optional(self.db.pool())
                .await?,
        )
    }

    /// A stored blob's bytes, file or row.
    pub async fn read_blob(&self, hash: &BlobHash) -> Result<Vec<u8>> {
        match self.blobs.read(hash).await {
            Ok(bytes) => Ok(bytes),
            Err(missing @ Error::NotFound(_)) => self.small_blob(hash).await?.ok_or(missing),
            Err(failed) => Err(failed),
        }
    }
}
