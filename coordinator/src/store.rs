//! Everything the coordinator keeps: the SQL behind each RPC, over the
//! [`Db`] handle, plus the blob store and the project key. Each public
//! method is one transaction, so every acknowledged change is durable
//! (invariant 7) and concurrent workers never see a half-made change.

mod accounts;
mod garbage;
mod jobs;
mod leaderboard;
mod reports;
mod researchers;
mod retention;
mod scheduler;
pub mod site;
mod small_blobs;
pub mod stats_export;
mod transfers;
mod transition;
mod validation;

pub use accounts::{Attached, HostIdentity};
pub use reports::{MAX_INLINE_BYTES, MAX_REPORTS_PER_BATCH, ReportStatus};
pub use researchers::{
    AuditEntry, DEFAULT_MAX_STORED_BYTES, DEFAULT_MAX_UNITS_IN_FLIGHT, FIRST_RESEARCHER,
    Researcher, ResearcherInfo,
};

use crate::blob_store::BlobStore;
use crate::db::Db;
use crate::integrity::Policy;
use cobble_proto::v1 as pb;
use ed25519_dalek::{SigningKey, VerifyingKey};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Shared state behind every service.
#[derive(Debug, Clone)]
pub struct Store {
    pub db: Db,
    pub blobs: BlobStore,
    signing_key: Arc<SigningKey>,
    /// Woken when results become available to send, so idle hosts waiting
    /// in `request_work` get them at once instead of polling.
    work_added: Arc<tokio::sync::Notify>,
    /// The integrity policy: trust, spot-checks, quotas, replica placement.
    policy: Arc<Policy>,
    /// When a host trusted, and one proven, for a module last took a unit
    /// of it, by module hash: while such hosts are active, replicas that
    /// none of them holds are kept for them a while. Per process, which is
    /// enough for a preference.
    proven_active: Arc<Mutex<HashMap<Vec<u8>, [i64; 2]>>>,
    /// Researchers' validator modules, run outside transactions.
    validators: Arc<crate::validator::Validators>,
    /// Woken when a unit starts waiting for its job's validator module.
    validation_wanted: Arc<tokio::sync::Notify>,
    /// Stored hashed, as keys are: what creating an account needs, if set.
    invite_code: Option<Arc<Vec<u8>>>,
    /// The offline code-signing key every job's module must be signed by.
    code_key: Option<VerifyingKey>,
    /// The runtimes this coordinator serves, by name (`runtime =
    /// "python"`): their modules' blobs, checked against their pinned
    /// hashes at start and never collected.
    runtimes: Arc<HashMap<&'static str, pb::BlobRef>>,
    /// Abuse limits: per-host request rates are checked where hosts
    /// authenticate.
    limits: Arc<crate::limits::Limits>,
    /// When this process last ran each background loop (the status page).
    loops: Arc<LoopClock>,
    /// What `/metrics` exports.
    metrics: Arc<crate::metrics::Metrics>,
}

/// The background loops whose last run the status page shows.
#[derive(Debug, Clone, Copy)]
pub enum Loop {
    /// Overdue leases, deferred credit, ending jobs.
    Sweeper,
    /// Researchers' validator modules and numeric comparisons.
    Validators,
    /// Retention and unreferenced blobs.
    Garbage,
}

/// Unix ms of each loop's last run in this process (0: never).
#[derive(Debug, Default)]
pub struct LoopClock([std::sync::atomic::AtomicI64; 3]);

impl LoopClock {
    pub fn ran(&self, which: Loop) {
        self.0[which as usize].store(cobble_core::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn last_runs(&self) -> Vec<(&'static str, Option<i64>)> {
        [
            ("lease sweeper and transitioner", Loop::Sweeper),
            ("validators", Loop::Validators),
            ("retention and garbage collection", Loop::Garbage),
        ]
        .into_iter()
        .map(|(name, which)| {
            let at = self.0[which as usize].load(std::sync::atomic::Ordering::Relaxed);
            (name, (at > 0).then_some(at))
        })
        .collect()
    }
}

impl Store {
    pub fn new(db: Db, blobs: BlobStore, signing_key: SigningKey) -> Self {
        Store {
            db,
            blobs,
            signing_key: Arc::new(signing_key),
            work_added: Arc::default(),
            policy: Arc::default(),
            proven_active: Arc::default(),
            validators: Arc::default(),
            validation_wanted: Arc::default(),
            invite_code: None,
            code_key: None,
            runtimes: Arc::default(),
            limits: crate::limits::Limits::off(),
            loops: Arc::default(),
            metrics: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn loops(&self) -> &LoopClock {
        &self.loops
    }

    pub fn with_limits(mut self, limits: Arc<crate::limits::Limits>) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &Arc<crate::limits::Limits> {
        &self.limits
    }

    /// Requires every job's module to be signed by `key`.
    pub fn with_code_key(mut self, key: Option<VerifyingKey>) -> Self {
        self.code_key = key;
        self
    }

    pub fn code_key(&self) -> Option<&VerifyingKey> {
        self.code_key.as_ref()
    }

    /// Serves these runtimes (`load_runtimes` in lib.rs checks the files).
    pub fn with_runtimes(mut self, runtimes: HashMap<&'static str, pb::BlobRef>) -> Self {
        self.runtimes = Arc::new(runtimes);
        self
    }

    pub fn runtimes(&self) -> &HashMap<&'static str, pb::BlobRef> {
        &self.runtimes
    }

    /// Replaces the default integrity policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Arc::new(policy);
        self
    }

    /// Requires this code to create an account (None: anyone may).
    pub fn with_invite_code(mut self, code: Option<String>) -> Self {
        self.invite_code = code
            .filter(|code| !code.is_empty())
            .map(|code| Arc::new(key_hash(&code)));
        self
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Wakes every host waiting for work.
    pub fn notify_work_added(&self) {
        self.work_added.notify_waiters();
    }

    /// Hands out work like `request_work`, but when there is none, waits up
    /// to `wait` for some to appear (a long poll: an idle host then costs
    /// one request per `wait`, and still hears of new work at once).
    /// Replicas held back for spacing become ready without a wake-up, so
    /// the wait looks again at least this often.
    pub async fn request_work_waiting(
        &self,
        host: HostIdentity,
        slots: u32,
        peer: Option<IpAddr>,
        wait: std::time::Duration,
    ) -> crate::Result<Vec<cobble_proto::v1::Assignment>> {
        let until = tokio::time::Instant::now() + wait;
        let recheck = std::time::Duration::from_millis(
            self.policy.replica_spacing_ms.clamp(100, 5_000) as u64,
        );
        loop {
            let added = self.work_added.notified();
            tokio::pin!(added);
            // Registered before looking, so work added meanwhile is not missed.
            added.as_mut().enable();
            let assignments = self.request_work_from(host, slots, peer).await?;
            let now = tokio::time::Instant::now();
            if !assignments.is_empty() || now >= until {
                return Ok(assignments);
            }
            let _ = tokio::time::timeout((until - now).min(recheck), added).await;
        }
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }
}

/// A uniform draw in [0, 1) from the OS random source: issue choices must
/// not be predictable by hosts.
fn random_fraction() -> f64 {
    (u64::from_le_bytes(cobble_core::random_bytes::<8>()) >> 11) as f64 / (1u64 << 53) as f64
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
