//! Everything the coordinator keeps: the SQL behind each RPC, over the
//! [`Db`] handle, plus the blob store and the project key. Each public
//! method is one transaction, so every acknowledged change is durable
//! (invariant 7) and concurrent workers never see a half-made change.

mod accounts;
mod jobs;
mod leaderboard;
mod reports;
mod scheduler;
mod transfers;

pub use accounts::{Attached, HostIdentity};
pub use reports::ReportStatus;

use crate::blob_store::BlobStore;
use crate::db::Db;
use crate::secrets::ResearcherToken;
use ed25519_dalek::SigningKey;
use std::sync::Arc;

/// Shared state behind every service.
#[derive(Debug, Clone)]
pub struct Store {
    pub db: Db,
    pub blobs: BlobStore,
    signing_key: Arc<SigningKey>,
    researcher_token: ResearcherToken,
    /// Woken when results become available to send, so idle hosts waiting
    /// in `request_work` get them at once instead of polling.
    work_added: Arc<tokio::sync::Notify>,
}

impl Store {
    pub fn new(
        db: Db,
        blobs: BlobStore,
        signing_key: SigningKey,
        researcher_token: ResearcherToken,
    ) -> Self {
        Store {
            db,
            blobs,
            signing_key: Arc::new(signing_key),
            researcher_token,
            work_added: Arc::default(),
        }
    }

    /// Wakes every host waiting for work.
    pub fn notify_work_added(&self) {
        self.work_added.notify_waiters();
    }

    /// Hands out work like `request_work`, but when there is none, waits up
    /// to `wait` for some to appear (a long poll: an idle host then costs
    /// one request per `wait`, and still hears of new work at once).
    pub async fn request_work_waiting(
        &self,
        host: HostIdentity,
        slots: u32,
        wait: std::time::Duration,
    ) -> crate::Result<Vec<cobble_proto::v1::Assignment>> {
        let added = self.work_added.notified();
        tokio::pin!(added);
        // Registered before looking, so work added meanwhile is not missed.
        added.as_mut().enable();
        let assignments = self.request_work(host, slots).await?;
        if !assignments.is_empty() || wait.is_zero() {
            return Ok(assignments);
        }
        if tokio::time::timeout(wait, added).await.is_err() {
            return Ok(assignments);
        }
        self.request_work(host, slots).await
    }

    pub fn researcher_token(&self) -> &ResearcherToken {
        &self.researcher_token
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
}

/// Stored secrets are kept as BLAKE3 hashes: a leaked database does not
/// leak working keys.
fn key_hash(key: &str) -> Vec<u8> {
    blake3::hash(key.as_bytes()).as_bytes().to_vec()
}

/// Compares a presented key with a stored hash in constant time.
fn key_matches(key: &str, stored: &[u8]) -> bool {
    let Ok(stored) = <[u8; 32]>::try_from(stored) else {
        return false;
    };
    blake3::hash(key.as_bytes()) == blake3::Hash::from_bytes(stored)
}
