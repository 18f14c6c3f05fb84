//! The worker's main loop: fetch a signed unit, verify it, gather its
//! blobs, run it in the sandbox, upload its outputs and report.
//!
//! Invariant 5 lives here: nothing of a unit is used before its manifest
//! signature and every blob hash verify; a unit that fails either is
//! reported as a client error and never run.

use crate::attach::{self, Volunteer};
use crate::error::{Error, Result};
use crate::journal::{Journal, Recovered};
use crate::sandbox::{EngineSettings, Invocation, RunReport, Sandbox, UnitControl, UnitLimits};
use cobble_client::{Connection, Credentials};
use cobble_core::BlobHash;
use cobble_proto::v1::{
    self as pb, report_request::Outcome, worker_service_client::WorkerServiceClient,
};
use ed25519_dalek::VerifyingKey;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Keep at most this much of stderr in an error report.
const STDERR_TAIL: usize = 2048;

/// Settings of `cobble-worker run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub coordinator: String,
    pub data_dir: PathBuf,
    pub volunteer: Volunteer,
    /// Units computed at once.
    pub slots: u32,
}

/// Rewrites a unit's stdout before upload. Only test adversaries set one
/// (see the e2e crate's cheater); the shipped worker never does.
pub type StdoutFilter = Arc<dyn Fn(&mut Vec<u8>) + Send + Sync>;

/// Extension points for tests; `Hooks::default()` is the real worker.
#[derive(Clone, Default)]
pub struct Hooks {
    pub stdout_filter: Option<StdoutFilter>,
}

/// Everything one slot needs, shared by all slots.
struct Worker {
    /// Carries this host's credentials on every call.
    connection: Connection,
    project_key: VerifyingKey,
    sandbox: Sandbox,
    /// For jobs that turned NaN canonicalization off (compiled code differs,
    /// so it has its own engine and module cache).
    sandbox_fast_nans: Sandbox,
    blob_dir: PathBuf,
    journal: Journal,
    hooks: Hooks,
}

/// Attaches and computes until `shutdown` resolves.
pub async fn run(
    config: RunConfig,
    hooks: Hooks,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let blob_dir = config.data_dir.join("blobs");
    let work_dir = config.data_dir.join("work");
    for dir in [&config.data_dir, &blob_dir, &work_dir] {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let channel = connect_with_retry(&config.coordinator).await;
    let attachment = attach::attach(
        &channel,
        &config.coordinator,
        &config.data_dir,
        &config.volunteer,
    )
    .await?;
    let project_key = cobble_core::manifest::project_key_from_hex(&attachment.project_key)?;
    let sandbox = Sandbox::new(Some(config.data_dir.join("modules")))?;
    let sandbox_fast_nans = Sandbox::with_settings(
        Some(config.data_dir.join("modules-fast-nans")),
        EngineSettings {
            nan_canonicalization: false,
            ..EngineSettings::default()
        },
    )?;
    let connection = Connection::from_channel(
        channel,
        Credentials::Host {
            id: attachment.host_id,
            key: attachment.host_key.clone(),
        },
    );
    let journal = Journal::new(work_dir);
    let recovered = journal.recover(&project_key, cobble_core::now_ms());
    let worker = Arc::new(Worker {
        connection,
        project_key,
        sandbox,
        sandbox_fast_nans,
        blob_dir,
        journal,
        hooks,
    });
    // Units a previous run of this worker left unfinished come first.
    let mut recovery = tokio::task::JoinSet::new();
    for item in recovered {
        let worker = worker.clone();
        recovery.spawn(async move { worker.recover(item).await });
    }
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..config.slots.max(1) {
        let worker = worker.clone();
        slots.spawn(async move { worker.slot_loop(slot).await });
    }
    tokio::select! {
        _ = slots.join_next() => tracing::error!("a work slot ended unexpectedly"),
        _ = shutdown => tracing::info!("stopping"),
    }
    // Dropping the set aborts the slots: a unit in flight is abandoned and
    // its lease expires at the coordinator, which reissues it.
    slots.shutdown().await;
    recovery.shutdown().await;
    Ok(())
}

async fn connect_with_retry(url: &str) -> Channel {
    let mut attempt = 0;
    loop {
        match cobble_client::connect(url).await {
            Ok(channel) => return channel,
            Err(error) => {
                let wait = backoff(attempt);
                tracing::warn!(%error, "coordinator unreachable; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// Exponential backoff with full jitter, so a crowd of workers does not
/// return to a recovering coordinator in lockstep.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(7))
        .min(MAX_BACKOFF);
    let fraction = f64::from(u16::from_le_bytes(cobble_core::random_bytes::<2>())) / 65_535.0;
    ceiling.mul_f64(0.5 + fraction / 2.0)
}

impl Worker {
    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        self.connection.request(message)
    }

    fn client(&self) -> WorkerServiceClient<Channel> {
        WorkerServiceClient::new(self.connection.channel())
    }

    async fn slot_loop(&self, slot: u32) {
        let mut failures = 0;
        loop {
            match self
                .client()
                .request_work(self.authorized(pb::WorkRequest { slots: 1 }))
                .await
            {
                Ok(response) => {
                    failures = 0;
                    let response = response.into_inner();
                    if response.assignments.is_empty() {
                        tokio::time::sleep(Duration::from_secs(u64::from(
                            response.retry_after_s.max(1),
                        )))
                        .await;
                    }
                    for assignment in response.assignments {
                        self.process(slot, assignment).await;
                    }
                }
                Err(status) => {
                    let wait = backoff(failures);
                    failures += 1;
                    tracing::warn!(%status, "requesting work failed; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn process(&self, slot: u32, assignment: pb::Assignment) {
        let received = std::time::Instant::now();
        let manifest = match cobble_core::manifest::verify(&assignment, &self.project_key) {
            Ok(manifest) => manifest,
            Err(error) => {
                // Only the lease id is read from the unverified bytes, to tell
                // the coordinator which unit was refused.
                tracing::error!(%error, "refusing unit with a bad signature");
                if let Ok(unverified) =
                    <pb::Manifest as prost::Message>::decode(assignment.manifest.as_slice())
                {
                    let request = pb::ReportRequest {
                        lease_id: unverified.lease_id.clone(),
                        outcome: Some(client_error("bad_signature", &error.to_string())),
                    };
                    self.report(&unverified, request).await;
                }
                return;
            }
        };
        tracing::info!(
            unit_id = manifest.unit_id,
            job_id = manifest.job_id,
            slot,
            "unit started"
        );
        if let Err(error) = self
            .journal
            .record_assignment(&manifest.lease_id, &assignment)
        {
            // Without a journal entry a crash would lose the unit; run it anyway.
            tracing::warn!(%error, "cannot journal the assignment");
        }
        let unit_dir = self.journal.unit_dir(&manifest.lease_id);
        let outcome = match self.compute(&manifest, &unit_dir, received).await {
            Ok(Some(outcome)) => Some(outcome),
            Ok(None) => None,
            Err(Error::Transfer(error)) if is_transient_transfer(&error) => {
                // The lease ran out while the coordinator was unreachable:
                // nothing to report; the coordinator reissues the unit.
                tracing::warn!(unit_id = manifest.unit_id, %error, "abandoning unit: coordinator unreachable until its deadline");
                None
            }
            Err(error) => {
                tracing::error!(unit_id = manifest.unit_id, %error, "unit could not run");
                let kind = match error {
                    Error::BlobMismatch { .. } => "bad_blob",
                    Error::InvalidModule(_) | Error::NotACommand => "bad_module",
                    _ => "internal",
                };
                Some(client_error(kind, &error.to_string()))
            }
        };
        if let Some(outcome) = outcome {
            let request = pb::ReportRequest {
                lease_id: manifest.lease_id.clone(),
                outcome: Some(outcome),
            };
            if let Err(error) = self.journal.record_report(&manifest.lease_id, &request) {
                tracing::warn!(%error, "cannot journal the report");
            }
            self.report(&manifest, request).await;
        }
        self.journal.finish(&manifest.lease_id);
    }

    /// Finishes what a previous run of this worker left in its journal.
    async fn recover(&self, item: Recovered) {
        match item {
            Recovered::Resume(assignment) => {
                tracing::info!("resuming a unit interrupted by a restart");
                self.process(u32::MAX, assignment).await;
            }
            Recovered::Report(manifest, request) => {
                tracing::info!(
                    unit_id = manifest.unit_id,
                    "re-sending a report interrupted by a restart"
                );
                self.report(&manifest, request).await;
                self.journal.finish(&manifest.lease_id);
            }
        }
    }

    /// Runs a verified unit. `None` means the coordinator asked us to stop.
    async fn compute(
        &self,
        manifest: &pb::Manifest,
        unit_dir: &Path,
        received: std::time::Instant,
    ) -> Result<Option<Outcome>> {
        let module_ref = manifest
            .module
            .as_ref()
            .ok_or_else(|| Error::InvalidModule("manifest names no module".into()))?;
        let module_path = self.ensure_blob(module_ref, manifest.deadline_ms).await?;
        let module_hash = BlobHash::from_slice(&module_ref.hash)?;
        let input_dir = unit_dir.join("input");
        let output_dir = unit_dir.join("output");
        let checkpoint_dir = unit_dir.join("checkpoint");
        // Inputs and outputs of an interrupted run are stale; its checkpoint is not.
        for dir in [&input_dir, &output_dir] {
            std::fs::remove_dir_all(dir).ok();
        }
        if checkpoint_dir.join("state").is_file() {
            tracing::info!(
                unit_id = manifest.unit_id,
                "resuming from the unit's checkpoint"
            );
        }
        for dir in [&input_dir, &output_dir, &checkpoint_dir] {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        for input in &manifest.inputs {
            let blob = input.blob.as_ref().ok_or_else(|| {
                Error::InvalidModule(format!("input {:?} has no blob", input.name))
            })?;
            let cached = self.ensure_blob(blob, manifest.deadline_ms).await?;
            link_input(&cached, &input_dir.join(&input.name))?;
        }
        let sandbox = if manifest.nan_canonicalization_off {
            &self.sandbox_fast_nans
        } else {
            &self.sandbox
        };
        let prepared = sandbox.prepare(&module_hash, &module_path)?;
        let remaining = manifest.deadline_ms - cobble_core::now_ms();
        if remaining <= 0 {
            tracing::warn!(
                unit_id = manifest.unit_id,
                "deadline passed before the unit could start"
            );
            return Ok(None);
        }
        let limits = UnitLimits::from_proto(
            &manifest.limits.unwrap_or_default(),
            Duration::from_millis(remaining as u64),
        );
        let invocation = Invocation {
            args: &manifest.args,
            input_dir: &input_dir,
            output_dir: &output_dir,
            checkpoint_dir: Some(&checkpoint_dir),
            stdin: Vec::new(),
            seed: unit_seed(manifest),
            limits,
            control: UnitControl::unpaused(),
        };
        let handed_over = received.elapsed();
        let report = tokio::select! {
            report = sandbox.run(&prepared, invocation) => report?,
            () = self.watch_lease(manifest, &checkpoint_dir) => {
                tracing::info!(unit_id = manifest.unit_id, "coordinator no longer needs this unit; aborted");
                return Ok(None);
            }
        };
        tracing::info!(
            unit_id = manifest.unit_id,
            fuel = report.fuel_used,
            elapsed_ms = report.elapsed.as_millis() as u64,
            // From receiving the assignment to the unit's first instruction:
            // verification, blobs, module lookup, instantiation.
            first_instruction_us = (handed_over + report.startup).as_micros() as u64,
            outcome = ?report.outcome,
            "unit finished"
        );
        self.outcome_of(report, manifest.deadline_ms)
            .await
            .map(Some)
    }

    async fn outcome_of(&self, report: RunReport, deadline_ms: i64) -> Result<Outcome> {
        if let Err(failure) = &report.outcome {
            let stderr = String::from_utf8_lossy(&report.stderr);
            let tail = &stderr[stderr.len().saturating_sub(STDERR_TAIL)..];
            return Ok(client_error(
                failure.kind(),
                &format!("{failure}; stderr: {tail}"),
            ));
        }
        let mut stdout = report.stdout;
        if let Some(filter) = &self.hooks.stdout_filter {
            filter(&mut stdout);
        }
        let stdout = with_retry(deadline_ms, "uploading stdout", || {
            self.connection.upload_bytes(&stdout)
        })
        .await?;
        let mut files = Vec::with_capacity(report.files.len());
        for file in &report.files {
            let blob = with_retry(deadline_ms, "uploading an output file", || {
                self.connection.upload_file(&file.path)
            })
            .await?;
            files.push(pb::OutputFile {
                name: file.name.clone(),
                blob: Some(blob),
            });
        }
        Ok(Outcome::Success(pb::Success {
            stdout: Some(stdout),
            files,
            fuel_used: report.fuel_used,
            elapsed_ms: report.elapsed.as_millis() as u64,
        }))
    }

    /// Reports the unit's progress every heartbeat; resolves when the
    /// coordinator says the lease should stop.
    async fn watch_lease(&self, manifest: &pb::Manifest, checkpoint_dir: &Path) {
        let lease_id = &manifest.lease_id;
        loop {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            let fraction = crate::sandbox::read_progress(checkpoint_dir);
            if let Some(fraction) = fraction {
                tracing::info!(
                    unit_id = manifest.unit_id,
                    "unit {:.0}% done",
                    fraction * 100.0
                );
            }
            let request = self.authorized(pb::HeartbeatRequest {
                running_leases: vec![lease_id.clone()],
                progress: fraction
                    .map(|fraction| pb::LeaseProgress {
                        lease_id: lease_id.clone(),
                        fraction,
                    })
                    .into_iter()
                    .collect(),
            });
            if let Ok(response) = self.client().heartbeat(request).await
                && response
                    .into_inner()
                    .abort_leases
                    .iter()
                    .any(|l| l == lease_id)
            {
                return;
            }
        }
    }

    /// Returns the cached path of a blob, downloading and verifying it first
    /// if needed. Only verified bytes ever reach the cache.
    async fn ensure_blob(&self, blob: &pb::BlobRef, deadline_ms: i64) -> Result<PathBuf> {
        let hash = BlobHash::from_slice(&blob.hash)?;
        let path = self.blob_dir.join(hash.to_hex());
        if path.is_file() {
            return Ok(path);
        }
        let downloaded = with_retry(deadline_ms, "downloading a blob", || {
            self.connection.download_verified(&hash, &path)
        })
        .await;
        match downloaded {
            Ok(size) if size == blob.size => Ok(path),
            Ok(size) => {
                std::fs::remove_file(&path).ok();
                Err(Error::BlobMismatch {
                    hash: hash.to_hex(),
                    expected: format!("{} bytes", blob.size),
                    actual: format!("{size} bytes"),
                })
            }
            Err(cobble_client::Error::HashMismatch { expected, actual }) => {
                Err(Error::BlobMismatch {
                    hash: expected.to_hex(),
                    expected: expected.to_hex(),
                    actual: actual.to_hex(),
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Reports, retrying through coordinator outages until the lease is over.
    async fn report(&self, manifest: &pb::Manifest, report: pb::ReportRequest) {
        let sent = with_retry(manifest.deadline_ms, "reporting", || async {
            self.client()
                .report_result(self.authorized(report.clone()))
                .await
                .map_err(cobble_client::Error::Rpc)
        })
        .await;
        match sent {
            Ok(response) => {
                tracing::info!(unit_id = manifest.unit_id, status = %response.into_inner().status, "reported");
            }
            Err(error) => {
                tracing::warn!(unit_id = manifest.unit_id, %error, "report refused; dropping the result");
            }
        }
    }
}

fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Internal | Code::Aborted
    )
}

/// Retries a transfer through coordinator outages, with backoff, until the
/// lease's deadline: a network failure is never the unit's failure.
async fn with_retry<T, F, Fut>(
    deadline_ms: i64,
    what: &str,
    mut transfer: F,
) -> Result<T, cobble_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, cobble_client::Error>>,
{
    let mut attempt = 0;
    loop {
        match transfer().await {
            Err(error) if is_transient_transfer(&error) && cobble_core::now_ms() < deadline_ms => {
                let wait = backoff(attempt);
                attempt += 1;
                tracing::warn!(%error, "{what} failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

fn is_transient_transfer(error: &cobble_client::Error) -> bool {
    match error {
        cobble_client::Error::Unreachable { .. } => true,
        cobble_client::Error::Rpc(status) => is_transient(status),
        _ => false,
    }
}

fn client_error(kind: &str, message: &str) -> Outcome {
    Outcome::ClientError(pb::ClientError {
        kind: kind.to_string(),
        message: message.to_string(),
    })
}

/// The same on every replica of a unit, different across units.
pub fn unit_seed(manifest: &pb::Manifest) -> [u8; 32] {
    let mut material = Vec::with_capacity(16);
    material.extend_from_slice(&manifest.job_id.to_le_bytes());
    material.extend_from_slice(&manifest.unit_id.to_le_bytes());
    blake3::derive_key("cobble unit seed v1", &material)
}

/// Places a cached blob at its input name: a hard link when possible (no
/// copy), else a copy. The unit sees `/input` read-only either way.
fn link_input(cached: &Path, target: &Path) -> Result<()> {
    if std::fs::hard_link(cached, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(cached, target)
        .map(|_| ())
        .map_err(Error::io(format!("placing input {}", target.display())))
}
